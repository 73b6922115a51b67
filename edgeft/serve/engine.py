"""The model behind the server: loaded once at start-up, then called from the worker threads.

* :class:`LMEngine` (causal LMs, any format :func:`edgeft.runtime.load_lm` opens): chat prompts are rendered
  with the bundle tokenizer's chat template exactly as fine-tuning and validate render them
  (:func:`edgeft.data.templates.prompt_ids`), with the recipe's system prompt when the request brings none,
  so a greedy answer to a validated prompt is the validated answer. Tokens come from
  :func:`edgeft.runtime.sampling.sample_tokens` (greedy or temperature / top-p), stop strings are cut from the
  text, and text is streamed in pieces that never end inside a stop string or a multi-byte character.
* :class:`TextEngine` (ONNX classifiers and encoders through :class:`edgeft.runtime.encoder.TextEncoder`):
  class probabilities, or embeddings with their cosine distance to the training centroid when the bundle
  carries reference statistics.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeft.errors import UnsupportedError


class RequestError(Exception):
    """A request the model cannot take (too long for the context, ...): the server answers 4xx with the message."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class Cancelled(Exception):
    """The request's deadline passed or its client went away."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    mean_logprob: float | None
    mean_entropy: float | None
    ttft_s: float
    decode_s: float
    tokens: list[int] = field(default_factory=list)


def _content(message: dict) -> str:
    c = message.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    return "".join(part.get("text", "") for part in c if isinstance(part, dict) and part.get("type") == "text")


class LMEngine:
    kind = "causal-lm"

    def __init__(self, bundle, fmt: str | None = None) -> None:
        from transformers import AutoTokenizer

        from edgeft.data.templates import stop_ids
        from edgeft.runtime import load_lm

        self.bundle = bundle
        fmt = fmt or bundle.artifact_info.format or "onnx"
        path = bundle.artifact_dir
        if fmt == "gguf":
            path = next(iter(sorted(path.glob("*.gguf"))), path)
        self.tok = AutoTokenizer.from_pretrained(str(bundle.tokenizer_dir))
        self.lm = load_lm(path, fmt, bundle.threads)
        self.stops = stop_ids(self.tok)
        self.system_prompt = bundle.system_prompt
        self.context = self._context_len()

    def _context_len(self) -> int:
        for d in (self.bundle.tokenizer_dir, self.bundle.artifact_dir):
            f = d / "config.json"
            if f.is_file():
                n = json.loads(f.read_text()).get("max_position_embeddings")
                if isinstance(n, int) and n > 0:
                    return n
        return int(getattr(self.tok, "model_max_length", 2048) or 2048)

    # ------------------------------------------------------------------ prompts
    def chat_ids(self, messages: list[dict]) -> list[int]:
        # "developer" is the newer OpenAI name of the system role
        msgs = [{"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m)} for m in messages]
        if self.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        if not getattr(self.tok, "chat_template", None):
            raise RequestError("this model has no chat template; use /v1/completions with a plain prompt")
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False).input_ids

    def text_ids(self, prompt: str) -> list[int]:
        return self.tok(prompt).input_ids

    def check_length(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt == 0:
            raise RequestError("the prompt is empty", param="prompt")
        if n_prompt + max_tokens > self.context:
            raise RequestError(f"the prompt has {n_prompt} tokens; with max_tokens={max_tokens} that exceeds the "
                               f"model's context of {self.context} tokens", param="max_tokens")

    # ------------------------------------------------------------------ decoding
    def complete(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None, deadline: float | None = None,
                 cancel: threading.Event | None = None, on_text: Callable[[str], None] | None = None) -> Completion:
        """Decode after ``ids``; ``on_text(piece)`` receives the answer as it grows (streaming)."""
        from edgeft.runtime.sampling import sample_tokens

        stop = [s for s in (stop or []) if s]
        hold = max((len(s) for s in stop), default=1) - 1
        tokens: list[int] = []
        logps: list[float] = []
        ents: list[float] = []
        sent = 0
        text = ""
        finish = "length"
        t0 = time.perf_counter()
        ttft = None
        steps = sample_tokens(self.lm, ids, max_tokens, self.stops, temperature, top_p, seed)
        try:
            for st in steps:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                logps.append(st.logprob)
                ents.append(st.entropy)
                if st.eos:
                    finish = "stop"
                    break
                tokens.append(st.token)
                text = self.tok.decode(tokens, skip_special_tokens=True)
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    break
                if on_text is not None:
                    safe = len(text) - hold
                    while safe > sent and text[safe - 1] == "\ufffd":  # an incomplete multi-byte character
                        safe -= 1
                    if safe > sent:
                        on_text(text[sent:safe])
                        sent = safe
                if (deadline is not None and time.monotonic() > deadline) or (cancel is not None and cancel.is_set()):
                    raise Cancelled()
        finally:
            steps.close()
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        total = time.perf_counter() - t0
        return Completion(text, len(ids), len(tokens), finish,
                          float(np.mean(logps)) if logps else None, float(np.mean(ents)) if ents else None,
                          ttft or total, total - (ttft or total), tokens)


class TextEngine:
    """ONNX sequence classifier (``kind == "classifier"``) or encoder (``"encoder"``)."""

    def __init__(self, bundle) -> None:
        from transformers import AutoTokenizer

        from edgeft.runtime.encoder import TextEncoder
        from edgeft.validate.report import ClassifierAccuracy

        self.bundle = bundle
        fmt = bundle.artifact_info.format
        if fmt != "onnx":
            raise UnsupportedError(f"{bundle.artifact}: serving {bundle.kind}s runs ONNX artifacts only (this one is "
                                   f"{fmt}); pick an ONNX one with --device")
        self.tok = AutoTokenizer.from_pretrained(str(bundle.tokenizer_dir))
        acc = bundle.artifact_info.accuracy
        max_length = (acc.max_length if isinstance(acc, ClassifierAccuracy) else None) or 128
        self.enc = TextEncoder(bundle.artifact_dir, self.tok, bundle.threads, max_length)
        self.kind = "classifier" if self.enc.classifier else "encoder"
        self.labels = self._labels() if self.enc.classifier else []
        stats = bundle.reference_stats() or {}
        emb = (stats.get("embedding") or {}).get(bundle.artifact) or {}
        self.centroid = np.asarray(emb["centroid"], np.float32) if emb.get("centroid") else None

    def _labels(self) -> list[str]:
        from edgeft.runtime.encoder import label_names

        return label_names(self.bundle.artifact_dir, self.bundle.tokenizer_dir)

    def token_counts(self, texts: list[str]) -> list[int]:
        return self.enc.token_counts(texts)

    def _distances(self, vectors: np.ndarray) -> list[float | None]:
        """Cosine distance of each (L2-normalized) row to the training centroid; None without reference statistics."""
        if self.centroid is None or self.centroid.shape[0] != vectors.shape[1]:
            return [None] * len(vectors)
        v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        c = self.centroid / max(float(np.linalg.norm(self.centroid)), 1e-12)
        return [float(1.0 - d) if math.isfinite(d) else None for d in (v @ c).tolist()]

    def classify(self, texts: list[str]) -> list[dict]:
        """Per text: label, its probability, every class probability, entropy, and the distance of the logit
        vector to the training centroid (a classifier graph exposes only its logits; see monitor.reference)."""
        logits = self.enc(texts).astype(np.float64)
        dist = self._distances(logits)
        z = np.exp(logits - logits.max(1, keepdims=True))
        probs = z / z.sum(1, keepdims=True)
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append({"label": self.labels[k] if k < len(self.labels) else str(k), "score": float(row[k]),
                        "probs": {(self.labels[i] if i < len(self.labels) else str(i)): float(p)
                                  for i, p in enumerate(row)},
                        "entropy": float(-(row * np.log(np.clip(row, 1e-12, None))).sum()),
                        "centroid_distance": dist[len(out)]})
        return out

    def embed(self, texts: list[str]) -> tuple[np.ndarray, list[float | None]]:
        """(embeddings [n, d], cosine distance of each to the training centroid or None)."""
        emb = self.enc(texts)
        return emb, self._distances(emb.astype(np.float64))


def load_engine(bundle):
    """The engine for the bundle's kind, with the chosen artifact loaded once."""
    if bundle.kind == "causal-lm":
        return LMEngine(bundle)
    if bundle.kind == "image-classifier":
        raise UnsupportedError(f"{bundle.source}: serving image classifiers is not supported yet (text models only: "
                               "causal LMs, text classifiers and encoders)")
    return TextEngine(bundle)
