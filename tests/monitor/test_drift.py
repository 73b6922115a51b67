"""Drift tests of ``edgeft monitor`` on constructed logs against reference statistics of the intent task.

The reference is built by the package-time code (:func:`edgeft.monitor.reference.reference_stats`) on
generated training prompts with the tiny ChatML tokenizer; confidence references are drawn from a known
distribution. An unshifted log (fresh prompts from the same generator, confidence from the same
distribution) must raise no alarm at the default thresholds for any of 20 seeds; shifted ones must.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import build_tokenizer
from edgeft.data.intents import generate
from edgeft.monitor.drift import ALPHA, JS_MARGIN, drift, uncertainty
from edgeft.monitor.reference import reference_stats

SEEDS = range(1, 21)
N_LOG = 60
WORDS = "the of and a to in is you that it he was for on are as with his they at be this have from".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def lm_stats(tok):
    train, ev = generate(400, 48, seed=0)
    stats = reference_stats("causal-lm", tok, train, ev, {})
    rng = np.random.default_rng(0)
    stats["artifacts"]["a"] = {"mean_logprob": rng.normal(-0.3, 0.1, 32).tolist(),
                               "mean_entropy": rng.normal(0.8, 0.2, 32).tolist(),
                               "completion_tokens": rng.integers(10, 20, 32).tolist()}
    return stats


@pytest.fixture(scope="module")
def tokenizer(tok):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok))


def lm_log(seed: int, n: int = N_LOG, prompts=None, logprob=(-0.3, 0.1)) -> list[dict]:
    rng = np.random.default_rng(seed)
    prompts = prompts or [r["prompt"] for r in generate(n, 1, seed=1000 + seed)[0]]
    return [{"artifact": "a", "input": {"prompt": p}, "output": "{}", "temperature": 0.0, "finish_reason": "stop",
             "completion_tokens": int(rng.integers(10, 20)),
             "confidence": {"mean_logprob": float(rng.normal(*logprob)), "mean_entropy": float(rng.normal(0.8, 0.2))}}
            for p in prompts[:n]]


def flagged(results) -> list[str]:
    return [r["feature"] for r in results if r["drift"]]


def test_reference_stats_hold_aggregates_only(lm_stats):
    assert lm_stats["kind"] == "causal-lm" and lm_stats["n_train"] == 400
    assert len(lm_stats["input_length"]) == 400 and all(isinstance(n, int) for n in lm_stats["input_length"])
    top = lm_stats["input_tokens"]
    assert abs(sum(top["top"].values()) + top["other"] - 1.0) < 1e-9
    assert not any(isinstance(v, str) and " " in v for v in top["top"])  # token ids, no text


@pytest.mark.parametrize("seed", SEEDS)
def test_unshifted_log_raises_no_alarm(lm_stats, tokenizer, seed):
    results, _ = drift(lm_log(seed), lm_stats, tokenizer, "a")
    assert all(r["tested"] for r in results), results
    assert flagged(results) == [], results


def test_false_alarm_rate_across_seeds_is_zero(lm_stats, tokenizer):
    alarms = sum(bool(flagged(drift(lm_log(s), lm_stats, tokenizer, "a")[0])) for s in SEEDS)
    assert alarms == 0
    assert (ALPHA, JS_MARGIN) == (0.001, 0.1)  # the defaults this rate is for


def test_other_domain_prompts_flag_input_drift(lm_stats, tokenizer):
    r = random.Random(0)
    prompts = [" ".join(r.choice(WORDS) for _ in range(r.randint(15, 30))) for _ in range(N_LOG)]
    results, scores = drift(lm_log(1, prompts=prompts), lm_stats, tokenizer, "a")
    assert {"input_length", "input_tokens"} <= set(flagged(results)), results
    base_scores = drift(lm_log(1), lm_stats, tokenizer, "a")[1]
    assert np.mean(scores) > np.mean(base_scores)  # per-request drift scores rank the shifted rows higher


def test_longer_in_domain_prompts_flag_length_and_tokens(lm_stats, tokenizer):
    prompts = [r["prompt"] + " and then tell me the weather in paris tomorrow" for r in generate(N_LOG, 1, seed=7)[0]]
    assert {"input_length", "input_tokens"} <= set(flagged(drift(lm_log(2, prompts=prompts), lm_stats, tokenizer,
                                                                 "a")[0]))


def test_lower_confidence_is_confidence_drift(lm_stats, tokenizer):
    results, _ = drift(lm_log(3, logprob=(-1.2, 0.3)), lm_stats, tokenizer, "a")
    assert flagged(results) == ["confidence"], results


def test_sampled_requests_are_left_out_of_confidence(lm_stats, tokenizer):
    rows = lm_log(4, logprob=(-1.2, 0.3))
    for r in rows:
        r["temperature"] = 0.8
    conf = next(r for r in drift(rows, lm_stats, tokenizer, "a")[0] if r["feature"] == "confidence")
    assert conf["n_log"] == 0 and not conf["tested"] and not conf["drift"]


def test_too_few_rows_are_not_tested(lm_stats, tokenizer):
    results, _ = drift(lm_log(5, n=5), lm_stats, tokenizer, "a")
    assert not any(r["tested"] for r in results) and flagged(results) == []


def _classifier_stats(tok) -> dict:
    train = [{"text": r["prompt"], "label": r["response"].split('"')[3]} for r in generate(400, 1, seed=0)[0]]
    stats = reference_stats("classifier", tok, train, [], {})
    rng = np.random.default_rng(0)
    stats["artifacts"]["c"] = {"score": rng.beta(8, 2, 32).tolist()}
    stats["embedding"]["c"] = {"distance": rng.gamma(2.0, 0.05, 400).tolist()}
    return stats


def _cls_log(stats, seed, labels=None, dist_scale=0.05) -> list[dict]:
    rng = np.random.default_rng(seed)
    names, p = zip(*stats["labels"].items())
    rows = []
    for r in generate(N_LOG, 1, seed=2000 + seed)[0]:
        label = labels or str(rng.choice(names, p=np.asarray(p) / sum(p)))
        score = float(rng.beta(8, 2))
        rows.append({"artifact": "c", "input": {"text": r["prompt"]}, "output": label,
                     "confidence": {"score": score, "entropy": float(-score * np.log(score))},
                     "centroid_distance": float(rng.gamma(2.0, dist_scale))})
    return rows


def test_classifier_prediction_and_embedding_drift(tok, tokenizer):
    stats = _classifier_stats(tok)
    assert abs(sum(stats["labels"].values()) - 1) < 1e-9 and len(stats["labels"]) == 6
    for seed in SEEDS:
        assert flagged(drift(_cls_log(stats, seed), stats, tokenizer, "c")[0]) == [], seed
    one_label = next(iter(stats["labels"]))
    assert flagged(drift(_cls_log(stats, 1, labels=one_label), stats, tokenizer, "c")[0]) == ["prediction"]
    assert flagged(drift(_cls_log(stats, 1, dist_scale=0.2), stats, tokenizer, "c")[0]) == ["embedding"]


def test_uncertainty_orders_least_confident_first():
    rows = [{"confidence": {"mean_entropy": e}} for e in (0.1, 2.0, None)]
    assert [uncertainty(r, "causal-lm") for r in rows] == [0.1, 2.0, -1.0]
