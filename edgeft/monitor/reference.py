"""Reference statistics of the training data, computed at package time and shipped in the bundle.

``reference_stats.json`` (listed and hashed in ``manifest.json`` like every bundle file) holds what
``edgeft monitor`` compares a served model's traffic with, per feature:

* ``input_length``: tokens per training input (the prompt, or the classifier's text), a sample of at most
  :data:`MAX_ROWS` values (the tokenizer's own count, no special tokens, no chat template);
* ``input_tokens``: the frequencies of the :data:`TOP_TOKENS` most common input tokens plus an
  ``other`` bucket (every other token);
* ``labels`` (classifiers): the training label distribution;
* per shipped artifact, the model's own behaviour on held-out inputs, the reference for confidence and
  prediction drift: causal LMs, per eval prompt, the mean log-probability and mean entropy of the greedy
  answer's tokens and its length (:func:`edgeft.runtime.sampling.sample_tokens`, the code the server decodes
  with); classifiers, per eval text, the top class probability and the predicted label distribution;
* ``embedding`` per artifact (encoders and classifiers): the centroid of the training inputs' L2-normalized
  vectors (an encoder's mean-pooled embedding; a classifier graph exposes only its logits, so its logit
  vector) and each training input's cosine distance to it (the spread).

Aggregates only: no training text is stored, only counts, lengths and means.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOP_TOKENS = 32  # more buckets only add sampling noise for logs of tens of requests
MAX_ROWS = 2000  # training inputs sampled for lengths, tokens and embeddings (deterministic: the first ones)
CONFIDENCE_EXAMPLES = 32  # held-out inputs each artifact is run on for the confidence reference


def input_tokens(tok, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each input as the monitor counts them (no special tokens, no template)."""
    return [list(tok(str(t), add_special_tokens=False).input_ids) for t in texts]


def token_table(ids: Sequence[Sequence[int]], top: int = TOP_TOKENS) -> dict:
    counts = Counter(t for row in ids for t in row)
    total = sum(counts.values()) or 1
    common = counts.most_common(top)
    return {"top": {str(t): c / total for t, c in common},
            "other": (total - sum(c for _, c in common)) / total, "n_tokens": sum(counts.values())}


def lm_confidence(lm, tok, prompts: Sequence[str], system_prompt: str, max_new_tokens: int) -> dict:
    from edgeft.data.templates import prompt_ids, stop_ids
    from edgeft.runtime.sampling import sample_tokens

    stops = stop_ids(tok)
    out = {"mean_logprob": [], "mean_entropy": [], "completion_tokens": []}
    for p in prompts:
        steps = list(sample_tokens(lm, prompt_ids(tok, system_prompt, p), max_new_tokens, stops))
        out["mean_logprob"].append(float(np.mean([s.logprob for s in steps])))
        out["mean_entropy"].append(float(np.mean([s.entropy for s in steps])))
        out["completion_tokens"].append(sum(1 for s in steps if not s.eos))
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def embedding_stats(vectors: np.ndarray) -> dict:
    u = _unit(vectors)
    c = u.mean(0)
    cn = c / max(float(np.linalg.norm(c)), 1e-12)
    dist = 1.0 - u @ cn
    return {"centroid": [round(float(x), 6) for x in c], "distance": [round(float(d), 6) for d in dist],
            "distance_mean": float(dist.mean()), "distance_std": float(dist.std())}


def reference_stats(kind: str, tokenizer_dir: Path, train: list[dict], eval_: list[dict], artifacts: dict,
                    system_prompt: str = "", threads: int = 2, max_new_tokens: int = 48) -> dict:
    """The statistics above. ``kind``: causal-lm | classifier | encoder; ``artifacts``: name -> (path, format) of
    the shipped artifacts; records carry ``prompt`` (LMs), ``text`` (encoders, raw text) and ``label``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    field = "text" if (kind != "causal-lm" or (train and "prompt" not in train[0])) else "prompt"
    texts = [str(r[field]) for r in train[:MAX_ROWS]]
    held = [str(r.get(field, "")) for r in eval_[:CONFIDENCE_EXAMPLES]]
    ids = input_tokens(tok, texts)
    stats: dict = {"schema_version": SCHEMA_VERSION, "kind": kind, "field": field, "n_train": len(train),
                   "n_sampled": len(texts), "input_length": [len(r) for r in ids], "input_tokens": token_table(ids),
                   "artifacts": {}}
    if kind == "classifier":
        labels = Counter(str(r["label"]) for r in train)
        stats["labels"] = {k: v / max(len(train), 1) for k, v in sorted(labels.items())}
    if kind != "causal-lm":
        stats["embedding"] = {}
    for name, (path, fmt) in artifacts.items():
        log.info("package: reference statistics of %s", name)
        if kind == "causal-lm":
            if field != "prompt":
                continue  # raw text: no prompt/answer pairs to measure confidence on
            from edgeft.runtime import load_lm

            lm = load_lm(Path(path), fmt, threads)
            stats["artifacts"][name] = lm_confidence(lm, tok, held, system_prompt, max_new_tokens)
            del lm
            continue
        if fmt != "onnx":
            continue  # the server runs ONNX classifiers/encoders only
        from edgeft.runtime.encoder import TextEncoder, label_names

        enc = TextEncoder(Path(path), tok, threads)
        stats["embedding"][name] = embedding_stats(enc(texts))
        if kind == "classifier":
            logits = enc(held).astype(np.float64)
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs = z / z.sum(1, keepdims=True)
            labels = label_names(Path(path), tokenizer_dir)
            pred = Counter(labels[i] if i < len(labels) else str(i) for i in probs.argmax(1).tolist())
            stats["artifacts"][name] = {"score": [float(p) for p in probs.max(1)],
                                        "predicted": {k: v / max(len(held), 1) for k, v in sorted(pred.items())}}
    return stats
