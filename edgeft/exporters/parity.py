"""Per-output parity checks in the style of optimum's validate_model_outputs.

One line per output with its max |diff| and tolerance, then one error listing every failure.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ParityError

log = logging.getLogger(__name__)


@dataclass
class OutputCheck:
    name: str
    max_abs_diff: float
    tolerance: float
    shape: tuple

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return f"{mark} {self.name}: max |diff| {self.max_abs_diff:.3g} (tolerance {self.tolerance:g}) shape {self.shape}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["passed"] = self.passed
        return d


def check_outputs(stage: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  tolerance: float) -> list[OutputCheck]:
    """Compare named outputs; log one line each; raise ParityError listing every failing output."""
    checks = []
    for name, ref in reference.items():
        if name not in candidate:
            raise ParityError(f"{stage}: output {name!r} is missing from the exported model")
        got = candidate[name]
        if tuple(ref.shape) != tuple(got.shape):
            raise ParityError(f"{stage}: output {name!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0
        checks.append(OutputCheck(name, diff, tolerance, tuple(ref.shape)))
    for c in checks:
        log.debug("%s parity: %s", stage, c.line())
    if checks:
        worst = max(checks, key=lambda c: c.max_abs_diff / c.tolerance)
        log.info("%s parity: %d outputs, worst %s", stage, len(checks), worst.line()[5:])
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ParityError(f"{stage}: {len(failed)} of {len(checks)} outputs exceed the tolerance: "
                          + "; ".join(c.line()[5:] for c in failed))
    return checks


def cached_decoder_parity(model_dir: Path, lm, ids: Sequence[int], steps: int, tolerance: float, quantized: bool,
                          stage: str) -> dict:
    """Prefill ``ids[:-steps]`` then ``steps`` cached one-token calls (teacher-forced) vs eager fp32 PyTorch, for a
    static-cache runtime ``lm`` whose ``_run(ids, start)`` gives logits at positions ``start..`` (ExecuTorch, LiteRT).

    fp32 programs are gated on max |logit diff|; for quantized ones the diff and top-1 agreement are
    reported here and the agreement gate is :func:`~edgeft.metrics.lm.quality_vs_reference` on the held-out
    windows (a handful of sample tokens is too few to gate an agreement on)."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = [int(t) for t in ids]
    steps = max(1, min(steps, len(ids) - 1))
    ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = ref_model(input_ids=torch.as_tensor(ids)[None]).logits[0].float().numpy()
    n = len(ids) - steps
    cand = [lm._run(ids[:n], 0)]
    for i in range(n, len(ids)):
        cand.append(lm._run([ids[i]], i))
    got = np.concatenate(cand)
    per = {"logits (prefill)": (ref[:n], got[:n]), "logits (cached decode steps)": (ref[n:], got[n:])}
    diffs = {k: float(np.max(np.abs(r - c))) for k, (r, c) in per.items()}
    agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    out = {"tokens": len(ids), "prefill_tokens": n, "decode_steps": steps, "max_abs_diff": max(diffs.values()),
           "per_output": diffs, "top1_agreement": agree}
    if not quantized:
        checks = check_outputs(stage, {k: r for k, (r, _) in per.items()}, {k: c for k, (_, c) in per.items()},
                               tolerance)
        out.update({"tolerance": tolerance, "checks": [c.to_dict() for c in checks]})
    log.info("%s parity: max |logit diff| %.3g, top-1 agreement %.3f over %d tokens", stage, out["max_abs_diff"],
             agree, len(ids))
    return out
