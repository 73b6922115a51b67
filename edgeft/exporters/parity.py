"""Per-output parity checks in the style of optimum's validate_model_outputs.

One line per output with its max |diff| and tolerance, then one error listing every failure.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

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
