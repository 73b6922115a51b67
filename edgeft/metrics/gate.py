"""The quality gate: a measured metric against a goal, the one check behind every stage's and validate's limits.

Goals work like Olive's ``MetricGoal`` (see :class:`~edgeft.config.schema.Goal`): every field
set on a goal is its own gate, so one goal can yield several results:

- ``threshold``: an absolute bound on the value (a minimum when higher is better, else a maximum);
- ``max_degradation``: the largest allowed absolute worsening vs the reference model;
- ``percent_max_degradation``: the largest allowed worsening in percent of the reference.

"Worsening" is ``reference - value`` when higher is better, ``value - reference`` otherwise; an
improvement is a negative worsening and always passes. Comparisons are inclusive (a value exactly
on the limit passes) with a tolerance of 1e-9 relative so float noise such as
``0.8 - 0.7 = 0.10000000000000009`` does not fail a 0.1 budget. A value that was not measured
(None or NaN) fails: a gate never passes on a missing number.

Every gate is a :class:`GateResult` whose ``detail`` reads as a sentence, e.g.
``exact_match 0.917 vs merged 0.958: drop 0.042 <= max 0.05``. Validate gates artifacts against the
merged model with :func:`quality_gates`; export and quantize hold their output to their input with
the same function and :func:`raise_failed` (a :class:`~edgeft.errors.ParityError` naming every failed gate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional, Union

from edgeft.config.schema import Goal

__all__ = ["HIGHER_IS_BETTER", "GateResult", "at_least", "at_most", "evaluate_goal", "fmt_num", "is_missing",
           "passed", "quality_gates", "raise_failed", "short_number"]

_REL_TOL = 1e-9

# Which way each gated metric improves (the key is the metric's name in reports and budgets).
HIGHER_IS_BETTER = {
    "exact_match": True, "json_valid": True, "accuracy": True, "macro_f1": True, "top5": True,
    "top1_agreement": True, "label_agreement": True, "embedding_cosine": True,
    "perplexity": False, "perplexity_general": False, "kl": False, "max_abs_logit_diff": False,
}


@dataclass
class GateResult:
    """One gate: ``value`` compared with ``limit`` (same unit), and a sentence saying how."""

    name: str
    artifact: str
    value: Optional[float]
    limit: Optional[float]
    passed: bool
    detail: str
    device: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def short_number(v: float) -> str:
    """A finite number in short form: 3 decimals below 100, 1 below 1000, none above; trailing zeros dropped."""
    a = abs(v)
    if a >= 1000:
        text = f"{v:.0f}"
    elif a >= 100:
        text = f"{v:.1f}"
    else:
        text = f"{v:.3f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_num(v: Optional[float]) -> str:
    """Short human form of a metric: 3 decimals below 100, trailing zeros dropped; '-' for None."""
    if v is None:
        return "-"
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return short_number(v)


def at_most(x: float, limit: float) -> bool:
    """``x <= limit``, with the gates' relative tolerance."""
    return x <= limit + _REL_TOL * max(1.0, abs(limit))


def at_least(x: float, limit: float) -> bool:
    """``x >= limit``, with the gates' relative tolerance."""
    return x >= limit - _REL_TOL * max(1.0, abs(limit))


def is_missing(v: Optional[float]) -> bool:
    """Not measured: None or NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def evaluate_goal(
    name: str,
    artifact: str,
    value: Optional[float],
    reference: Optional[float],
    goal: Union[Goal, Mapping],
    higher_is_better: bool,
    *,
    reference_name: str = "merged",
) -> list[GateResult]:
    """One :class:`GateResult` per field set on ``goal`` (none set: empty list).

    ``value`` is the artifact's metric, ``reference`` the reference model's. The result's ``value``
    and ``limit`` are in the unit of the gate: the metric for ``threshold``, the absolute
    worsening for ``max_degradation``, the percent worsening for ``percent_max_degradation``.
    """
    goal = goal if isinstance(goal, Goal) else Goal.model_validate(dict(goal))
    gates: list[tuple[str, float]] = [
        (kind, getattr(goal, kind))
        for kind in ("threshold", "max_degradation", "percent_max_degradation")
        if getattr(goal, kind) is not None
    ]
    results = []
    for kind, limit in gates:
        gate = f"{name} {kind}"

        def result(v: Optional[float], passed: bool, detail: str) -> GateResult:
            return GateResult(gate, artifact, v, float(limit), passed, detail)

        if is_missing(value):
            results.append(result(None, False, "not measured"))
            continue
        value = float(value)
        if kind == "threshold":
            if higher_is_better:
                ok = at_least(value, limit)
                detail = f"{name} {fmt_num(value)} {'>=' if ok else '<'} min {fmt_num(limit)}"
            else:
                ok = at_most(value, limit)
                detail = f"{name} {fmt_num(value)} {'<=' if ok else '>'} max {fmt_num(limit)}"
            results.append(result(value, ok, detail))
            continue

        if is_missing(reference):
            results.append(result(None, False, f"no {reference_name} value to compare with"))
            continue
        ref = float(reference)
        worse = (ref - value) if higher_is_better else (value - ref)
        word = ("drop", "gain") if higher_is_better else ("rise", "fall")
        head = f"{name} {fmt_num(value)} vs {reference_name} {fmt_num(ref)}"
        if kind == "max_degradation":
            ok = at_most(worse, limit)
            moved = f"{word[0]} {fmt_num(worse)}" if worse >= 0 else f"{word[1]} {fmt_num(-worse)}"
            detail = f"{head}: {moved} {'<=' if ok else '>'} max {fmt_num(limit)}"
            results.append(result(worse, ok, detail))
        else:
            if ref == 0:
                pct = 0.0 if worse <= 0 else math.inf
            else:
                pct = 100.0 * worse / abs(ref)
            ok = at_most(pct, limit)
            moved = f"{word[0]} {pct:.1f}%" if pct >= 0 else f"{word[1]} {-pct:.1f}%"
            detail = f"{head}: {moved} {'<=' if ok else '>'} max {fmt_num(limit)}%"
            results.append(result(pct, ok, detail))
    return results


def quality_gates(artifact: str, measured: Mapping, reference: Mapping, goals: Mapping[str, Optional[Goal]],
                  *, reference_name: str = "merged") -> list[GateResult]:
    """Every goal of ``goals`` (metric name -> goal; None: not gated) on ``measured[metric]`` vs
    ``reference[metric]``, in the order of ``goals``; the direction of each metric is :data:`HIGHER_IS_BETTER`'s."""
    out: list[GateResult] = []
    for metric, goal in goals.items():
        if goal is not None:
            out += evaluate_goal(metric, artifact, measured.get(metric), reference.get(metric), goal,
                                 HIGHER_IS_BETTER[metric], reference_name=reference_name)
    return out


def passed(results: Iterable[GateResult]) -> bool:
    return all(r.passed for r in results)


def raise_failed(what: str, results: Iterable[GateResult], hint: str = "") -> None:
    """Raise :class:`~edgeft.errors.ParityError` ``"<what>: FAIL <detail>; <detail> (<hint>)"`` when a gate failed."""
    from edgeft.errors import ParityError

    failed = [r.detail for r in results if not r.passed]
    if failed:
        raise ParityError(f"{what}: FAIL " + "; ".join(failed) + (f" ({hint})" if hint else ""))
