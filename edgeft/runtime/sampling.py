"""Token choice for decodes that are not plain greedy: temperature / top-p sampling with the model's confidence.

:func:`sample_tokens` drives any runtime's :meth:`~edgeft.runtime.base.CausalLM.logit_stream` and yields, for
each new token, its log-probability and the entropy of the distribution it came from. Both are measured on
the model's own distribution (temperature 1, before top-p), so a greedy request and a sampled one report
confidence on the same scale; they are what ``edgeft serve`` logs and ``edgeft monitor`` compares with the
bundle's reference. Greedy requests (``temperature == 0``) go through the runtime's own greedy loop
(:meth:`~edgeft.runtime.base.CausalLM.greedy_stream`): speculative with an artifact's drafts table, exactly
as validate decodes, so greedy served answers equal validated ones; sampled requests take one token per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["Step", "log_softmax", "sample_tokens"]


@dataclass(frozen=True)
class Step:
    token: int
    logprob: float  # log p(token) under the model's distribution (temperature 1)
    entropy: float  # entropy of that distribution, nats
    eos: bool  # the token ends the turn (it is not part of the answer)


def log_softmax(row: np.ndarray) -> np.ndarray:
    x = np.asarray(row, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _step(token: int, logp: np.ndarray, eos: set[int]) -> Step:
    return Step(token, float(logp[token]), float(-(np.exp(logp) * logp).sum()), token in eos)


def _choose(logp: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    z = logp / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.shape[0], p=p))


def sample_tokens(lm, prompt: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int], temperature: float = 0.0,
                  top_p: float = 1.0, seed: int | None = None) -> Iterator[Step]:
    """Decode up to ``max_new_tokens`` tokens after ``prompt`` with ``lm`` (a CausalLM), one :class:`Step` per token.

    The last step has ``eos=True`` when the model ended its turn. The caller may stop early (stop strings, a
    deadline, a closed connection) by closing the iterator.
    """
    eos = {int(e) for e in eos_ids}
    if temperature <= 0:  # the runtime's own greedy loop (speculative where it is), as validate decodes
        pairs = lm.greedy_stream(prompt, max_new_tokens, eos)
        try:
            for token, row in pairs:
                yield _step(token, log_softmax(row), eos)
        finally:
            pairs.close()
        return
    rng = np.random.default_rng(seed)
    stream = lm.logit_stream(prompt, max_new_tokens)
    try:
        row = next(stream)
        for i in range(max_new_tokens):
            logp = log_softmax(row)
            token = _choose(logp, temperature, top_p, rng)
            yield _step(token, logp, eos)
            if token in eos or i == max_new_tokens - 1:
                return
            row = stream.send(token)
    finally:
        stream.close()
