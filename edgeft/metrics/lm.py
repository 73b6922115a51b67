"""Quality of a causal LM vs a reference: perplexity (fixed protocol), top-1 agreement, KL on logits.

Any :class:`edgeft.runtime.base.CausalLM` works (anything with ``logits(ids)``); exporters (genai, gguf,
ExecuTorch, LiteRT-LM), quantize, auto and validate score with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

# The advice a failed export quality gate ends with.
EXPORT_HINT = "use a higher-precision preset, e.g. lm_head: int8 / mixed_layers: true, or loosen the preset's limits"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def windows(ids: Sequence[int], seq_len: int, stride: int, max_tokens: int) -> list[np.ndarray]:
    """Fixed protocol: the first ``max_tokens`` tokens cut into windows of ``seq_len`` every ``stride``."""
    ids = np.asarray(ids[:max_tokens], np.int64)
    out = []
    for start in range(0, max(len(ids) - 1, 1), stride):
        w = ids[start:start + seq_len]
        if len(w) >= 2:
            out.append(w)
        if start + seq_len >= len(ids):
            break
    return out


def text_windows(tokenizer, text: str, seq_len: int, stride: int, max_tokens: int) -> list[np.ndarray]:
    """:func:`windows` of ``text`` tokenized without special tokens."""
    return windows(tokenizer(text, add_special_tokens=False).input_ids, seq_len, stride, max_tokens)


def perplexity(lm, wins: list[np.ndarray]) -> float:
    nll, n = 0.0, 0
    for w in wins:
        lp = log_softmax(lm.logits(w))
        nll -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        n += len(w) - 1
    return float(np.exp(nll / max(n, 1)))


def compare(reference_logits: list[np.ndarray], lm, wins: list[np.ndarray]) -> dict:
    """Top-1 agreement and mean KL(reference || candidate) per token over the given windows."""
    agree, kl, n = 0, 0.0, 0
    for ref, w in zip(reference_logits, wins):
        cand = lm.logits(w)
        p = log_softmax(ref)
        q = log_softmax(cand)
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        kl += float((np.exp(p) * (p - q)).sum())
        n += len(w)
    return {"top1_agreement": agree / max(n, 1), "kl": kl / max(n, 1)}


class Replay:
    """Logits computed once, handed out in order: :func:`perplexity` and :func:`compare` call ``logits(w)`` once per
    window, in the order of the windows."""

    def __init__(self, rows: Sequence[np.ndarray]) -> None:
        self.rows = iter(rows)

    def logits(self, _w):
        return next(self.rows)


def quality_vs_reference(model_dir: Path, lm, windows: Sequence[np.ndarray], what: str,
                         min_top1_agreement: float, max_ppl_increase_pct: float,
                         max_abs_logit_diff: float | None = None, hint: str = EXPORT_HINT) -> dict:
    """Score ``lm`` against the fp32 PyTorch model in ``model_dir`` on ``windows``; raise ParityError past a limit.

    Reports perplexity of both, its change in percent, top-1 agreement and mean KL per token, and
    max |logit diff| (gated only when ``max_abs_logit_diff`` is given: unquantized exports). The limits
    are gates of :mod:`edgeft.metrics.gate` (``top1_agreement`` threshold, ``perplexity`` percent
    worsening vs the fp32 model, ``max_abs_logit_diff`` threshold).
    """
    from edgeft.config.schema import Goal
    from edgeft.metrics import gate
    from edgeft.runtime.lm import TorchLM

    ref = TorchLM(Path(model_dir))
    ref_logits = [ref.logits(w) for w in windows]
    cand_logits = [lm.logits(w) for w in windows]
    diff = max(float(np.max(np.abs(r - c))) for r, c in zip(ref_logits, cand_logits))
    ppl_ref = perplexity(Replay(ref_logits), list(windows))
    ppl = perplexity(Replay(cand_logits), list(windows))
    agree = compare(ref_logits, Replay(cand_logits), list(windows))
    out = {"n_windows": len(windows), "n_tokens": int(sum(len(w) for w in windows)),
           "perplexity_reference": ppl_ref, "perplexity": ppl,
           "ppl_increase_pct": 100.0 * (ppl / ppl_ref - 1.0), **agree, "max_abs_logit_diff": diff,
           "min_top1_agreement": min_top1_agreement, "max_ppl_increase_pct": max_ppl_increase_pct}
    goals = {"top1_agreement": Goal.model_construct(threshold=min_top1_agreement),
             "perplexity": Goal.model_construct(percent_max_degradation=max_ppl_increase_pct)}
    if max_abs_logit_diff is not None:
        goals["max_abs_logit_diff"] = Goal.model_construct(threshold=max_abs_logit_diff)
    results = gate.quality_gates(what, out, {"perplexity": ppl_ref}, goals, reference_name="fp32")
    line = (f"{what}: ppl {ppl:.3f} vs fp32 {ppl_ref:.3f} ({out['ppl_increase_pct']:+.1f}%), top-1 agreement "
            f"{agree['top1_agreement']:.3f}, KL {agree['kl']:.4f}, max |logit diff| {diff:.3g}")
    log.info(line)
    out["passed"] = gate.passed(results)
    gate.raise_failed(line, results, hint)
    return out


def export_quality_windows(sample_ids, quality_ids) -> list[np.ndarray]:
    """The windows an export is scored on: the held-out ``quality_ids``, else the one parity sample."""
    if quality_ids:
        return [np.asarray(w, np.int64) for w in quality_ids]
    ids = list(sample_ids) if sample_ids is not None else list(range(100, 164))
    return [np.asarray(ids, np.int64)]
