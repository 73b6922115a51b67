"""Quality of a causal LM vs a reference: perplexity (fixed protocol), top-1 agreement, KL on logits.

Any :class:`edgeft.runtime.base.CausalLM` works; exporters (genai, gguf), quantize and validate score with it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
