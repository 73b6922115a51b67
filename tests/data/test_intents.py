"""The quickstart task generator: deterministic, disjoint splits, canonical JSON answers."""

from __future__ import annotations

import json

import pytest

from edgeft.data.generators import GENERATORS
from edgeft.data.intents import answer_text, generate
from edgeft.errors import ConfigError


def test_same_seed_same_split_other_seed_other_split():
    assert generate(50, 10, seed=3) == generate(50, 10, seed=3)
    assert generate(50, 10, seed=3) != generate(50, 10, seed=4)


def test_train_and_eval_prompts_are_disjoint_and_unique():
    train, ev = generate(400, 48, seed=0)
    prompts = [r["prompt"] for r in train + ev]
    assert len(prompts) == len(set(prompts)) == 448
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in ev}


def test_answers_are_canonical_json_with_copied_slots():
    train, _ = generate(200, 1, seed=1)
    intents = set()
    for r in train:
        obj = json.loads(r["response"])
        assert answer_text(obj) == r["response"]  # compact, key order as generated
        intents.add(obj["intent"])
        for key, value in obj.items():
            if key not in ("intent", "action") and isinstance(value, str):
                assert value in r["prompt"], (key, value, r["prompt"])
    assert intents == {"set_alarm", "set_timer", "lights", "thermostat", "media", "send_message"}


def test_too_many_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="lower n_train/n_eval"):
        generate(100_000, 10)


def test_generator_registry_names_valid_choices():
    assert "intents" in GENERATORS
    with pytest.raises(ConfigError, match="valid choices: .*intents"):
        GENERATORS.get("intent", "data.generated.generator")
