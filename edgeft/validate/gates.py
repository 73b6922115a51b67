"""Gates: accuracy goals vs the merged model, device budgets, and the "fine-tune erased" flag.

Goals work like Olive's ``MetricGoal`` (see :class:`~edgeft.config.schema.Goal`): every field
set on a goal is its own gate, so one goal can yield several results:

- ``threshold``: an absolute bound on the value (a minimum when higher is better, else a maximum);
- ``max_degradation``: the largest allowed absolute worsening vs the reference (merged) model;
- ``percent_max_degradation``: the largest allowed worsening in percent of the reference.

"Worsening" is ``reference - value`` when higher is better, ``value - reference`` otherwise; an
improvement is a negative worsening and always passes. Comparisons are inclusive (a value exactly
on the limit passes) with a tolerance of 1e-9 relative so float noise such as
``0.8 - 0.7 = 0.10000000000000009`` does not fail a 0.1 budget. A value that was not measured
(None or NaN) fails: a gate never passes on a missing number.

Every gate is a :class:`GateResult` whose ``detail`` reads as a sentence, e.g.
``exact_match 0.917 vs merged 0.958: drop 0.042 <= max 0.05``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Union

from edgeft.config.schema import DeviceProfile, Goal

__all__ = ["GateResult", "erased_flag", "evaluate_goal", "fmt_num", "latency_gates"]

_REL_TOL = 1e-9


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


def fmt_num(v: Optional[float]) -> str:
    """Short human form of a metric: 3 decimals below 100, trailing zeros dropped; '-' for None."""
    if v is None:
        return "-"
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
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


def _le(x: float, limit: float) -> bool:
    return x <= limit + _REL_TOL * max(1.0, abs(limit))


def _ge(x: float, limit: float) -> bool:
    return x >= limit - _REL_TOL * max(1.0, abs(limit))


def _missing(v: Optional[float]) -> bool:
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

    ``value`` is the artifact's metric, ``reference`` the merged model's. The result's ``value``
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

        if _missing(value):
            results.append(result(None, False, "not measured"))
            continue
        value = float(value)
        if kind == "threshold":
            if higher_is_better:
                ok = _ge(value, limit)
                detail = f"{name} {fmt_num(value)} {'>=' if ok else '<'} min {fmt_num(limit)}"
            else:
                ok = _le(value, limit)
                detail = f"{name} {fmt_num(value)} {'<=' if ok else '>'} max {fmt_num(limit)}"
            results.append(result(value, ok, detail))
            continue

        if _missing(reference):
            results.append(result(None, False, f"no {reference_name} value to compare with"))
            continue
        ref = float(reference)
        worse = (ref - value) if higher_is_better else (value - ref)
        word = ("drop", "gain") if higher_is_better else ("rise", "fall")
        head = f"{name} {fmt_num(value)} vs {reference_name} {fmt_num(ref)}"
        if kind == "max_degradation":
            ok = _le(worse, limit)
            moved = f"{word[0]} {fmt_num(worse)}" if worse >= 0 else f"{word[1]} {fmt_num(-worse)}"
            detail = f"{head}: {moved} {'<=' if ok else '>'} max {fmt_num(limit)}"
            results.append(result(worse, ok, detail))
        else:
            if ref == 0:
                pct = 0.0 if worse <= 0 else math.inf
            else:
                pct = 100.0 * worse / abs(ref)
            ok = _le(pct, limit)
            moved = f"{word[0]} {pct:.1f}%" if pct >= 0 else f"{word[1]} {-pct:.1f}%"
            detail = f"{head}: {moved} {'<=' if ok else '>'} max {fmt_num(limit)}%"
            results.append(result(pct, ok, detail))
    return results


# budget field -> (measured key, "max" | "min", unit)
_BUDGETS = (
    ("ttft_ms", "ttft_ms_p50", "max", "ms"),
    ("decode_tok_s", "decode_tok_s", "min", "tok/s"),
    ("per_inference_ms", "per_inference_ms_p50", "max", "ms"),
    ("ram_mb", "peak_rss_mb", "max", "MB"),
    ("size_mb", "size_mb", "max", "MB"),
)


def latency_gates(device: DeviceProfile, artifact: str, measured: Mapping) -> list[GateResult]:
    """Gates of ``device.budgets`` (only the budgets that are set) against ``measured`` numbers.

    ``measured`` may hold ``ttft_ms_p50``, ``decode_tok_s``, ``per_inference_ms_p50``,
    ``peak_rss_mb``, ``size_mb`` and ``label`` (how they were obtained: ``measured-host``,
    ``projected``, ``measured-device``); the label goes into each gate's name. A budget whose
    key is absent from ``measured`` does not apply (e.g. TTFT for an encoder) and yields no
    gate; a key present with value None fails as "not measured".
    """
    label = measured.get("label") or "unlabelled"
    budgets = device.budgets
    results = []
    for field, key, bound, unit in _BUDGETS:
        limit = getattr(budgets, field)
        if limit is None or key not in measured:
            continue
        name = f"{field} ({label})"
        value = measured.get(key)
        if _missing(value):
            results.append(GateResult(name, artifact, None, float(limit), False, "not measured", device.name))
            continue
        value = float(value)
        if bound == "max":
            ok = _le(value, limit)
            op = "<=" if ok else ">"
        else:
            ok = _ge(value, limit)
            op = ">=" if ok else "<"
        detail = f"{key} {fmt_num(value)} {unit} {op} {bound} {fmt_num(limit)} {unit} on {device.name} ({label})"
        results.append(GateResult(name, artifact, value, float(limit), ok, detail, device.name))
    return results


def erased_flag(
    artifact: str,
    value: Optional[float],
    base_value: Optional[float],
    tuned_value: Optional[float],
    margin: float,
    *,
    metric: str = "exact_match",
) -> Optional[str]:
    """A loud message when quantization undid the fine-tune, else None.

    Raised when the tuned (merged) model was clearly better than the base model
    (``tuned - base > margin``) and the artifact's metric fell back to within ``margin`` of the
    base model's (``value <= base + margin``, so also when it fell below the base). Any missing
    number: None (nothing to conclude). Higher-is-better metrics only.
    """
    if _missing(value) or _missing(base_value) or _missing(tuned_value):
        return None
    value, base, tuned = float(value), float(base_value), float(tuned_value)
    if tuned - base <= margin:
        return None
    if not _le(value - base, margin):
        return None
    return (
        f"FINE-TUNE ERASED: {artifact} {metric} {value:.2f} is within {margin:.2f} of the base model's "
        f"{base:.2f} (merged: {tuned:.2f})"
    )


def artifact_budgets(own, default):
    """An artifact's gates: the fields its own ``budgets`` sets, over the recipe's ``validate.budgets``.

    A quantize entry or export extra that names one goal (say ``perplexity_general``) keeps every other goal
    the recipe sets, rather than falling back to the schema's defaults.
    """
    if own is None:
        return default
    return default.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})
