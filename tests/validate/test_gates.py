"""Goal arithmetic (Olive MetricGoal semantics), device budgets, and the fine-tune-erased flag."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgeft.config import load_device
from edgeft.config.schema import DeviceBudgets, Goal
from edgeft.metrics.gate import GateResult, evaluate_goal, fmt_num
from edgeft.validate.gates import erased_flag, latency_gates

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _shipped_profiles(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)


def one(value, reference, higher_is_better, name="m", **goal) -> GateResult:
    (result,) = evaluate_goal(name, "int8", value, reference, Goal(**goal), higher_is_better)
    return result


# --------------------------------------------------------------------------- goals


@pytest.mark.parametrize(
    "value,hib,passed",
    [
        (0.9, True, True),    # on the minimum: passes
        (0.95, True, True),
        (0.89, True, False),
        (0.9, False, True),   # on the maximum: passes
        (0.85, False, True),
        (0.91, False, False),
    ],
)
def test_threshold(value, hib, passed):
    r = one(value, None, hib, threshold=0.9)
    assert r.passed is passed
    assert (r.value, r.limit, r.name) == (value, 0.9, "m threshold")
    assert r.detail.startswith(f"m {fmt_num(value)} ")
    assert ("min 0.9" if hib else "max 0.9") in r.detail


@pytest.mark.parametrize(
    "value,ref,hib,passed,worse",
    [
        (0.7, 0.8, True, True, 0.1),    # 0.8 - 0.7 = 0.10000000000000009: still on the boundary
        (0.69, 0.8, True, False, 0.11),
        (0.9, 0.8, True, True, -0.1),   # improved
        (10.1, 10.0, False, True, 0.1),  # lower is better: a rise of exactly the max
        (10.2, 10.0, False, False, 0.2),
        (9.0, 10.0, False, True, -1.0),
    ],
)
def test_max_degradation(value, ref, hib, passed, worse):
    r = one(value, ref, hib, max_degradation=0.1)
    assert r.passed is passed, r.detail
    assert r.value == pytest.approx(worse) and r.limit == 0.1
    assert r.name == "m max_degradation"


@pytest.mark.parametrize(
    "value,ref,hib,passed,pct",
    [
        (0.72, 0.8, True, True, 10.0),   # a 10% drop, on the boundary
        (0.7, 0.8, True, False, 12.5),
        (0.63, 0.7, True, True, 10.0),
        (15.0, 12.0, False, True, 25.0),  # perplexity up 25%
        (15.1, 12.0, False, False, 25.833),
        (11.0, 12.0, False, True, -8.333),
    ],
)
def test_percent_max_degradation(value, ref, hib, passed, pct):
    limit = 10.0 if hib else 25.0
    r = one(value, ref, hib, percent_max_degradation=limit)
    assert r.passed is passed, r.detail
    assert r.value == pytest.approx(pct, abs=1e-3)


def test_detail_reads_as_a_sentence():
    r = one(0.9166, 0.9583, True, name="exact_match", max_degradation=0.05)
    assert r.detail == "exact_match 0.917 vs merged 0.958: drop 0.042 <= max 0.05"
    r = one(0.85, 0.9583, True, name="exact_match", max_degradation=0.05)
    assert r.detail == "exact_match 0.85 vs merged 0.958: drop 0.108 > max 0.05" and not r.passed
    r = one(14.0, 12.0, False, name="perplexity", percent_max_degradation=25)
    assert r.detail == "perplexity 14 vs merged 12: rise 16.7% <= max 25%"
    r = one(11.0, 12.0, False, name="perplexity", max_degradation=1)
    assert r.detail == "perplexity 11 vs merged 12: fall 1 <= max 1"


def test_one_result_per_set_field():
    goal = Goal(threshold=0.5, max_degradation=0.05, percent_max_degradation=10)
    results = evaluate_goal("exact_match", "int4", 0.9, 0.92, goal, True)
    assert [r.name for r in results] == [
        "exact_match threshold", "exact_match max_degradation", "exact_match percent_max_degradation"]
    assert all(r.passed and r.artifact == "int4" and r.device is None for r in results)
    assert evaluate_goal("exact_match", "int4", 0.9, 0.92, Goal(), True) == []
    # a plain dict works too (as read back from YAML/JSON)
    assert evaluate_goal("exact_match", "int4", 0.9, 0.92, {"threshold": 0.95}, True)[0].passed is False


@pytest.mark.parametrize("value", [None, math.nan])
def test_unmeasured_value_fails_every_gate(value):
    goal = Goal(threshold=0.5, max_degradation=0.05)
    results = evaluate_goal("exact_match", "int8", value, 0.9, goal, True)
    assert len(results) == 2
    assert all(not r.passed and r.detail == "not measured" and r.value is None for r in results)


def test_missing_reference_fails_relative_gates_only():
    goal = Goal(threshold=0.5, percent_max_degradation=5)
    thr, pct = evaluate_goal("exact_match", "int8", 0.9, None, goal, True)
    assert thr.passed and not pct.passed and "no merged value" in pct.detail


def test_to_dict_round_trip():
    r = one(0.9, 0.92, True, max_degradation=0.05)
    d = r.to_dict()
    assert set(d) == {"name", "artifact", "value", "limit", "passed", "detail", "device"}
    assert GateResult(**d) == r


# --------------------------------------------------------------------------- device budgets


def test_latency_gates_against_phone_budgets():
    phone = load_device("phone-cpu")  # ttft 1500 ms, decode 10 tok/s, ram 1500 MB, size 600 MB
    measured = {"label": "measured-host", "ttft_ms_p50": 1500.0, "decode_tok_s": 9.9, "peak_rss_mb": None}
    gates = {g.name: g for g in latency_gates(phone, "int8", measured)}
    # size_mb absent from the measurements: that budget does not apply
    assert set(gates) == {"ttft_ms (measured-host)", "decode_tok_s (measured-host)", "ram_mb (measured-host)"}
    assert gates["ttft_ms (measured-host)"].passed  # on the budget
    assert not gates["decode_tok_s (measured-host)"].passed
    assert gates["decode_tok_s (measured-host)"].detail == (
        "decode_tok_s 9.9 tok/s < min 10 tok/s on phone-cpu (measured-host)")
    ram = gates["ram_mb (measured-host)"]
    assert not ram.passed and ram.detail == "not measured"
    assert all(g.device == "phone-cpu" and g.artifact == "int8" for g in gates.values())


def test_latency_gates_only_for_set_budgets():
    assert latency_gates(load_device("host"), "int8", {"label": "measured-host", "ttft_ms_p50": 10}) == []
    enc = load_device("pi5").model_copy(update={"budgets": DeviceBudgets(per_inference_ms=50, size_mb=100)})
    gates = latency_gates(enc, "minilm", {"label": "projected", "per_inference_ms_p50": 51, "size_mb": 22.5})
    assert [(g.name, g.passed) for g in gates] == [("per_inference_ms (projected)", False),
                                                   ("size_mb (projected)", True)]


# --------------------------------------------------------------------------- erased


def test_erased_flag_raised_when_quantized_falls_back_to_base():
    msg = erased_flag("int8", 0.06, 0.02, 0.96, 0.1)
    assert msg == ("FINE-TUNE ERASED: int8 exact_match 0.06 is within 0.10 of the base model's 0.02 "
                   "(merged: 0.96)")
    assert erased_flag("int8", 0.0, 0.02, 0.96, 0.1)  # below the base model: erased too
    assert erased_flag("int8", 0.12, 0.02, 0.96, 0.1)  # exactly at the margin


def test_erased_flag_not_raised():
    assert erased_flag("int8", 0.5, 0.02, 0.96, 0.1) is None  # kept much of the fine-tune
    assert erased_flag("int8", 0.06, 0.02, 0.1, 0.1) is None  # the tune was never clearly better
    assert erased_flag("int8", 0.03, 0.02, 0.03, 0.1) is None
    assert erased_flag("int8", None, 0.02, 0.96, 0.1) is None
    assert erased_flag("int8", 0.06, None, 0.96, 0.1) is None


def test_an_artifacts_own_budgets_override_only_the_goals_they_name():
    from edgeft.config.schema import Budgets
    from edgeft.validate.gates import artifact_budgets

    recipe = Budgets(exact_match=Goal(max_degradation=0.35), perplexity=Goal(percent_max_degradation=40))
    own = Budgets(perplexity_general=Goal(percent_max_degradation=1))
    b = artifact_budgets(own, recipe)
    assert b.perplexity_general.percent_max_degradation == 1
    assert b.exact_match.max_degradation == 0.35 and b.perplexity.percent_max_degradation == 40
    assert artifact_budgets(None, recipe) is recipe
