"""Augment: a teacher model labels unlabeled inputs (greedy decoding) into reviewable training examples.

The teacher is anything :func:`edgeft.models.resolve_model` resolves (an embedded name, an HF
folder such as a run's ``runs/<name>/merge``, a .gguf file). Each input is rendered with the chat
template and system prompt exactly as fine-tuning renders prompts, the answer is greedy-decoded,
and the result is written atomically as JSONL records::

    {"prompt": ..., "response": ..., "source": "augment", "teacher": "<name>", "json_valid": true}

so a person can review (and delete) rows before adding them to a training file. ``json_valid`` is
informative only (useful for JSON tasks such as the quickstart intents).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

from edgeft.errors import DataError

log = logging.getLogger(__name__)


def read_inputs(path: Path, field: str = "prompt", limit: int | None = None) -> list[dict]:
    """Unlabeled inputs: a .txt file (one per line) or .jsonl/.csv/.tsv records with ``field``."""
    from edgeft.data.readers import read_records, read_text

    path = Path(path)
    if path.suffix.lower() == ".txt":
        rows = [{field: line.strip()} for line in read_text(path).splitlines() if line.strip()]
    else:
        rows = read_records(path, [field])
    if not rows:
        raise DataError(f"{path}: no inputs found")
    return rows[:limit] if limit else rows


def load_lm(model_spec: str, base_dir: Path | None = None):
    """(model, tokenizer, name) for a causal LM named the way recipes name models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.models import resolve_model

    m = resolve_model(model_spec, base_dir)
    tok = AutoTokenizer.from_pretrained(str(m.path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(m.path), torch_dtype=torch.float32).eval()
    return model, tok, m.name


def complete(model, tokenizer, prompts: Sequence[str], system_prompt: str, max_new_tokens: int = 48,
             batch_size: int = 8) -> list[str]:
    """Greedy answers to chat-formatted prompts (the same rendering fine-tuning uses)."""
    from edgeft.data.templates import prompt_ids, stop_ids
    from edgeft.runtime.lm import TorchLM

    lm = TorchLM(model)
    stops = stop_ids(tokenizer)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        ids = lm.generate([prompt_ids(tokenizer, system_prompt, p) for p in batch], max_new_tokens, stops)
        out += [tokenizer.decode(o, skip_special_tokens=True).strip() for o in ids]
    return out


def _json_valid(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def augment(model_spec: str, inputs: Path, out: Path, system_prompt: str = "", field: str = "prompt",
            max_new_tokens: int = 48, limit: int | None = None, batch_size: int = 8,
            model=None, tokenizer=None) -> dict:
    """Label ``inputs`` with the teacher ``model_spec``; write ``out`` (JSONL, atomic); return a summary.

    ``model``/``tokenizer`` may be passed to reuse an already loaded teacher (``model_spec`` then only names it).
    """
    from edgeft.data.readers import write_jsonl

    rows = read_inputs(inputs, field, limit)
    if model is None:
        model, tokenizer, name = load_lm(model_spec)
    else:
        name = model_spec
    t0 = time.perf_counter()
    answers = complete(model, tokenizer, [str(r[field]) for r in rows], system_prompt, max_new_tokens, batch_size)
    seconds = time.perf_counter() - t0
    records = []
    for r, a in zip(rows, answers):
        extra = {k: v for k, v in r.items() if k not in (field, "response")}
        records.append({"prompt": str(r[field]), "response": a, "source": "augment", "teacher": name,
                        "json_valid": _json_valid(a), **extra})
    write_jsonl(out, records)
    empty = sum(1 for a in answers if not a)
    log.info("augment: %d examples from %s in %.1fs -> %s", len(records), name, seconds, out)
    return {"out": str(out), "n": len(records), "empty": empty, "teacher": name, "seconds": seconds,
            "json_valid": sum(r["json_valid"] for r in records) / len(records)}
