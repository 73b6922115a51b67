"""Select (active learning): score an unlabeled pool by the model's uncertainty and keep the top-k for labeling.

Uncertainty of a probability distribution ``p``:

* ``entropy``: ``-sum p log p`` (nats); highest when the model spreads its mass evenly;
* ``margin``: ``1 - (p_top1 - p_top2)``; highest when the two best options are tied.

Which distribution (``scope``):

* causal LM, ``next-token``: the first answer token after the chat-formatted prompt (or after the
  raw text with ``template=False``);
* causal LM, ``answer``: every token of the greedy answer (up to ``max_new_tokens``), averaged;
* a sequence classifier (a folder whose architecture ends in ``ForSequenceClassification``): its
  label distribution (``scope`` is ignored).

Written atomically as JSONL, most uncertain first: ``{"prompt", "score", "rank", "strategy",
"scope", "model", ...the input's other fields}``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, Sequence

from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("entropy", "margin")
SCOPES = ("next-token", "answer")


def uncertainty(probs, strategy: str = "entropy"):
    """Uncertainty per row of a [n, k] probability tensor (higher = less sure)."""
    import torch

    if strategy == "entropy":
        return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
    if strategy == "margin":
        top = probs.topk(2, dim=-1).values
        return 1.0 - (top[:, 0] - top[:, 1])
    raise ConfigError(f"select: unknown strategy {strategy!r}; valid choices: {', '.join(STRATEGIES)}")


def score_classifier(model, tokenizer, texts: Sequence[str], strategy: str, batch_size: int = 16) -> list[float]:
    import torch

    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True)
            probs = model(**enc).logits.float().softmax(-1)
            out += uncertainty(probs, strategy).tolist()
    return out


def score_next_token(model, tokenizer, texts: Sequence[str], strategy: str, system_prompt: str = "",
                     template: bool = True, batch_size: int = 16) -> list[float]:
    """Uncertainty of the next-token distribution at the end of each (chat-formatted) text."""
    import torch

    from edgeft.data.templates import prompt_ids

    seqs = [prompt_ids(tokenizer, system_prompt, t) if template else tokenizer(t, add_special_tokens=False).input_ids
            for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            n = max(len(s) for s in batch)
            ids = torch.tensor([s + [pad] * (n - len(s)) for s in batch])  # right padding: causal rows stay exact
            mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(batch)), torch.tensor([len(s) - 1 for s in batch])]
            out += uncertainty(last.float().softmax(-1), strategy).tolist()
    return out


def score_answer(model, tokenizer, texts: Sequence[str], strategy: str, system_prompt: str = "",
                 template: bool = True, max_new_tokens: int = 32) -> list[float]:
    """Mean uncertainty over the tokens of each greedy answer."""
    import torch

    from edgeft.data.templates import prompt_ids, stop_ids

    stops = stop_ids(tokenizer)
    out: list[float] = []
    with torch.no_grad():
        for t in texts:
            ids = prompt_ids(tokenizer, system_prompt, t) if template else tokenizer(t, add_special_tokens=False).input_ids
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops or None,
                               pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
            probs = torch.cat([s.float().softmax(-1) for s in g.scores])
            out.append(float(uncertainty(probs, strategy).mean()))
    return out


def write_ranked(rows: Sequence[dict], scores: Sequence[float], out: Path, top_k: int, strategy: str, scope: str,
                 model: str, field: str = "prompt", key: str = "prompt") -> list[dict]:
    """Write the ``top_k`` highest-scoring rows to ``out`` (JSONL, atomically), most uncertain first.

    Each record: ``{key: row[field], "score", "rank", "strategy", "scope", "model", ...the row's other fields}``;
    ties keep the input order. Shared by :func:`select` and ``edgeft monitor``'s review file.
    """
    from edgeft.data.readers import write_jsonl

    order = sorted(range(len(rows)), key=lambda i: (-scores[i], i))[:top_k]
    records = [{key: rows[i][field], "score": scores[i], "rank": r + 1, "strategy": strategy, "scope": scope,
                "model": model, **{k: v for k, v in rows[i].items() if k not in (field, key)}}
               for r, i in enumerate(order)]
    write_jsonl(out, records)
    return records


def select(model_spec: str, pool: Path, out: Path, top_k: int = 20, strategy: str = "entropy",
           scope: Literal["next-token", "answer"] = "next-token", field: str = "prompt", system_prompt: str = "",
           template: bool = True, max_new_tokens: int = 32, limit: int | None = None) -> dict:
    """Score ``pool`` with ``model_spec``; write the ``top_k`` most uncertain inputs to ``out``; return a summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.data.augment import read_inputs
    from edgeft.models import resolve_model

    if strategy not in STRATEGIES:
        raise ConfigError(f"select: unknown strategy {strategy!r}; valid choices: {', '.join(STRATEGIES)}")
    if scope not in SCOPES:
        raise ConfigError(f"select: unknown scope {scope!r}; valid choices: {', '.join(SCOPES)}")
    rows = read_inputs(pool, field, limit)
    m = resolve_model(model_spec)
    tok = AutoTokenizer.from_pretrained(str(m.path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = [str(r[field]) for r in rows]
    if m.kind == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(str(m.path), torch_dtype=torch.float32).eval()
        scope = "labels"
        scores = score_classifier(model, tok, texts, strategy)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(m.path), torch_dtype=torch.float32).eval()
        use_template = template and bool(getattr(tok, "chat_template", None))
        if scope == "answer":
            scores = score_answer(model, tok, texts, strategy, system_prompt, use_template, max_new_tokens)
        else:
            scores = score_next_token(model, tok, texts, strategy, system_prompt, use_template)
    records = write_ranked([{**r, field: texts[i]} for i, r in enumerate(rows)], scores, out, top_k, strategy, scope,
                           m.name, field)
    finite = [s for s in scores if math.isfinite(s)]
    log.info("select: %d of %d inputs by %s (%s) -> %s", len(records), len(rows), strategy, scope, out)
    return {"out": str(out), "pool": len(rows), "selected": len(records), "strategy": strategy, "scope": scope,
            "model": m.name, "score_max": max(finite) if finite else None,
            "score_mean": sum(finite) / len(finite) if finite else None,
            "score_selected_min": records[-1]["score"] if records else None}
