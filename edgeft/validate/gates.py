"""Device budgets, the "fine-tune erased" flag, and each artifact's budgets.

Accuracy goals vs the merged model are :mod:`edgeft.metrics.gate`'s (the one quality gate, shared with
export and quantize); the budgets of a device profile (time to first token, decode speed, per-inference
latency, RAM, size) are gated here with the same comparisons: inclusive, with a relative tolerance of
1e-9, and a number that was not measured fails.
"""

from __future__ import annotations

from typing import Mapping, Optional

from edgeft.config.schema import DeviceProfile
from edgeft.metrics.gate import GateResult, at_least, at_most, fmt_num, is_missing

__all__ = ["artifact_budgets", "erased_flag", "latency_gates"]


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
        if is_missing(value):
            results.append(GateResult(name, artifact, None, float(limit), False, "not measured", device.name))
            continue
        value = float(value)
        if bound == "max":
            ok = at_most(value, limit)
            op = "<=" if ok else ">"
        else:
            ok = at_least(value, limit)
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
    if is_missing(value) or is_missing(base_value) or is_missing(tuned_value):
        return None
    value, base, tuned = float(value), float(base_value), float(tuned_value)
    if tuned - base <= margin:
        return None
    if not at_most(value - base, margin):
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
