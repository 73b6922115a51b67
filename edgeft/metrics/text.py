"""Task metrics of generated answers: exact match and JSON validity, label accuracy, and the greedy scoring loop
of finetune evaluation, multitask evaluation and validate."""

from __future__ import annotations

import json

from edgeft.data import templates


def score(prediction: str, reference: str) -> dict[str, float]:
    """exact_match: the canonical string matches; json_valid: the prediction parses as a JSON object."""
    pred = prediction.strip()
    try:
        valid = isinstance(json.loads(pred), dict)
    except (json.JSONDecodeError, ValueError):
        valid = False
    return {"exact_match": float(pred == reference.strip()), "json_valid": float(valid)}


def first_word(text: str) -> str:
    import re

    m = re.search(r"[\w'-]+", text.lower())
    return m.group(0) if m else ""


def task_score(prediction: str, reference: str, metric: str = "exact_match") -> dict[str, float]:
    """exact_match: the whole answer (plus json_valid); accuracy: the first word (a label), case-insensitive."""
    if metric == "accuracy":
        return {"accuracy": float(first_word(prediction) == first_word(reference))}
    return score(prediction, reference)


def greedy_task_metrics(lm, tokenizer, records, system_prompt: str, max_new_tokens: int = 48,
                        metric: str = "exact_match", batch_size: int = 16, misses: int = 0) -> dict:
    """Greedy-decode every record's prompt and score the answer: the one scoring loop of finetune
    evaluation, multitask evaluation and validate.

    ``lm`` is a :class:`edgeft.runtime.base.CausalLM`. A record may carry its own ``system_prompt``
    and ``metric`` (multitask runs) and a ``task`` name. Returns the mean of each
    :func:`task_score` key over the records that produced it; ``exact_match`` is then the mean of
    every record's *primary* score (exact match, or label accuracy for ``accuracy`` records), so a
    multitask run is gated on all its tasks; ``per_task`` when records name tasks; up to
    ``misses`` failed examples in ``misses_sample``.
    """
    stops = templates.stop_ids(tokenizer)
    sums: dict[str, list[float]] = {}
    primary: list[float] = []
    per_task: dict[str, dict[str, list[float]]] = {}
    samples = []
    for i in range(0, len(records), batch_size):
        batch = records[i:i + batch_size]
        prompts = [templates.prompt_ids(tokenizer, r.get("system_prompt", system_prompt), r["prompt"]) for r in batch]
        outs = lm.generate(prompts, max_new_tokens, stops)
        for r, o in zip(batch, outs):
            text = tokenizer.decode(o, skip_special_tokens=True)
            m = r.get("metric", metric)
            s = task_score(text, r["response"], m)
            main = s["accuracy" if m == "accuracy" else "exact_match"]
            primary.append(main)
            for k, v in s.items():
                sums.setdefault(k, [0.0, 0])
                sums[k][0] += v
                sums[k][1] += 1
                if "task" in r:
                    t = per_task.setdefault(str(r["task"]), {}).setdefault(k, [0.0, 0])
                    t[0] += v
                    t[1] += 1
            if len(samples) < misses and not main:
                samples.append({"prompt": r["prompt"], "expected": r["response"], "got": text.strip()})
    out = {k: tot / n for k, (tot, n) in sums.items()}
    out["exact_match"] = sum(primary) / max(len(primary), 1)
    out.setdefault("json_valid", None)
    if per_task:
        out["per_task"] = {t: {k: tot / n for k, (tot, n) in d.items()} for t, d in per_task.items()}
    if misses:
        out["misses_sample"] = samples
    return out


def task_metrics(lm, tokenizer, records, system_prompt: str, max_new_tokens: int, batch_size: int = 16) -> dict:
    """Validate's task metrics of ``lm``: :func:`greedy_task_metrics` with up to 5 misses and ``n_examples``;
    no records (raw-text runs, whose metric is perplexity): None for the metrics."""
    if not records:
        return {"exact_match": None, "json_valid": None, "n_examples": 0, "misses_sample": []}
    return {**greedy_task_metrics(lm, tokenizer, records, system_prompt, max_new_tokens, batch_size=batch_size,
                                  misses=5), "n_examples": len(records)}
