"""Objectives grpo and reward, and the GRPO rewards, on tiny random LLaMAs built in code (seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SYSTEM_PROMPT, sft_records, tiny_recipe_dict, write_recipe


def _grpo_cfg(**kw):
    from edgeft.config.schema import FinetuneConfig

    base = dict(objective="grpo", batch_size=2, max_seq_len=64, learning_rate=3e-2, lr_scheduler="constant",
                warmup_ratio=0.0, early_stopping=None, save_total_limit=1, lora={"r": 4, "alpha": 8},
                grpo={"rewards": [{"name": "json_valid"}], "num_generations": 8, "max_completion_length": 8,
                      "eval_examples": 2})
    return FinetuneConfig(**{**base, **kw})


def _conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --------------------------------------------------------------------------- programmatic rewards


def test_json_valid_reward_scores_json_objects_only():
    from edgeft.config.schema import RewardSpec
    from edgeft.finetune.rewards import json_valid

    f = json_valid(RewardSpec(name="json_valid"), None)
    got = f(prompts=["p"] * 4, completions=[_conv('{"intent":"lights"}'), _conv('{"intent":'), _conv("[1, 2]"),
                                            _conv("sure! here it is")])
    assert got == [1.0, 0.0, 0.0, 0.0]
    assert f.__name__ == "json_valid"


def test_exact_slots_gives_partial_credit_per_slot():
    from edgeft.config.schema import RewardSpec
    from edgeft.finetune.rewards import exact_slots, slot_score

    ref = '{"intent":"lights","room":"kitchen","action":"on"}'
    assert slot_score(ref, ref) == 1.0
    assert slot_score('{"action":"on","room":"kitchen","intent":"lights"}', ref) == 1.0  # key order is free
    assert slot_score('{"intent":"lights","room":"office","action":"on"}', ref) == pytest.approx(2 / 3)  # wrong value
    assert slot_score('{"intent":"lights","action":"on"}', ref) == pytest.approx(2 / 3)  # missing slot
    assert slot_score('{"intent":"lights","room":"kitchen","action":"on","x":1}', ref) == pytest.approx(3 / 4)  # extra
    assert slot_score('{"intent":"lights","room":"kitchen"', ref) == 0.0  # not JSON
    assert slot_score('{"intent":"thermostat","temperature":"20"}', ref) == 0.0  # nothing right
    f = exact_slots(RewardSpec(name="exact_slots"), None)
    assert f(prompts=["p", "q"], completions=[_conv(ref), _conv("no")], response=[ref, ref]) == [1.0, 0.0]


def test_length_reward_is_zero_at_the_target_and_minus_one_far_from_it(tiny_lm_dir):
    from transformers import AutoTokenizer

    from edgeft.config.schema import RewardSpec
    from edgeft.finetune.rewards import RewardContext, length, length_score

    assert length_score(10, 10) == 0.0
    assert length_score(15, 10) == pytest.approx(-0.5)
    assert length_score(5, 10) == pytest.approx(-0.5)
    assert length_score(40, 10) == -1.0
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    f = length(RewardSpec(name="length", target_tokens=4), RewardContext(tok))
    assert f(prompts=["p"] * 3, completions=[_conv("a")] * 3, completion_ids=[[1] * 4, [1] * 6, [1] * 12]) == \
        [0.0, -0.5, -1.0]
    # without target_tokens: the reference answer's length (+ the end-of-turn token)
    g = length(RewardSpec(name="length"), RewardContext(tok))
    ref = '{"intent":"lights"}'
    n = len(tok(ref, add_special_tokens=False).input_ids) + 1
    assert g(prompts=["p"], completions=[_conv(ref)], completion_ids=[[1] * n], response=[ref]) == [0.0]


def test_reward_names_match_the_schema_and_unknown_names_fail_in_one_line():
    from pydantic import ValidationError

    from edgeft.config.schema import REWARD_NAMES, FinetuneConfig
    from edgeft.finetune.rewards import REWARDS

    assert sorted(REWARD_NAMES) == REWARDS.names()
    with pytest.raises(ValidationError, match=r"unknown reward 'exact_slot'; one of json_valid, exact_slots"):
        FinetuneConfig(grpo={"rewards": [{"name": "exact_slot"}]})
    with pytest.raises(ValidationError, match="judge needs `model`"):
        FinetuneConfig(grpo={"rewards": [{"name": "judge"}]})
    with pytest.raises(ValidationError, match="target_tokens applies to reward length"):
        FinetuneConfig(grpo={"rewards": [{"name": "json_valid", "target_tokens": 3}]})


def test_judge_reward_is_a_probability_from_a_local_model(tiny_lm_dir):
    from transformers import AutoTokenizer

    from edgeft.config.schema import RewardSpec
    from edgeft.errors import ModelSourceError
    from edgeft.finetune.rewards import RewardContext, judge

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    f = judge(RewardSpec(name="judge", model=str(tiny_lm_dir)), RewardContext(tok))
    prompts = [[{"role": "user", "content": "turn on the lights"}]] * 2
    got = f(prompts=prompts, completions=[_conv('{"intent":"lights"}'), _conv("no idea")])
    assert len(got) == 2 and all(0.0 < s < 1.0 for s in got) and got[0] != got[1]
    with pytest.raises(ModelSourceError, match="not found"):
        judge(RewardSpec(name="judge", model=str(tiny_lm_dir / "nope")), RewardContext(tok))


# --------------------------------------------------------------------------- GRPO


def test_grpo_raises_a_trivially_learnable_reward(tiny_lm_dir, tmp_path, monkeypatch):
    """Reward = the share of completion tokens in a fixed seventh of the vocabulary (about 0.14 for the random
    model): twelve GRPO steps at a high learning rate must push it well up."""
    from edgeft.finetune import finetune, rewards

    def builder(spec, ctx):
        def f(prompts, completions, completion_ids=None, **kw):
            return [sum(t % 7 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]

        f.__name__ = "json_valid"
        return f

    monkeypatch.setitem(rewards.REWARDS._items, "json_valid", builder)
    cfg = _grpo_cfg(method="full", max_steps=12)
    m = finetune(tiny_lm_dir, sft_records(8), sft_records(2), tmp_path / "out", cfg, SYSTEM_PROMPT,
                 work_dir=tmp_path / "work")
    r = m["rewards"]["json_valid"]
    assert r["first"] < 0.25, r
    assert r["last"] > r["first"] + 0.2, f"GRPO did not raise the reward: {r}"
    assert m["steps"] == 12 and m["rollouts"] == 12 * 2 * 8
    assert m["rollouts_per_second"] > 0
    assert m["exact_match_before"] is not None and m["eval_exact_match"] is not None
    assert (tmp_path / "out" / "model" / "edgeft_method.json").is_file()


def test_init_adapter_continues_an_sft_adapter(tiny_lm_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from edgeft.config.schema import FinetuneConfig
    from edgeft.errors import ConfigError
    from edgeft.finetune import METHODS, finetune
    from edgeft.finetune.objectives.common import load_init_adapter

    sft = FinetuneConfig(objective="sft", max_steps=3, batch_size=4, max_seq_len=64, learning_rate=1e-2,
                         eval_examples=0, early_stopping=None, lora={"r": 4, "alpha": 8})
    finetune(tiny_lm_dir, sft_records(4), sft_records(2), tmp_path / "sft", sft, SYSTEM_PROMPT)
    adapter = tmp_path / "sft" / "adapter"
    lora = METHODS.get("lora")
    model = lora.prepare(lora.load_model(tiny_lm_dir, sft), sft)
    load_init_adapter(model, adapter, lora)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    mine = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert saved and all(torch.equal(mine[k], v) for k, v in saved.items())
    other = sft.model_copy(update={"lora": sft.lora.model_copy(update={"r": 8, "alpha": 16})})
    with pytest.raises(ConfigError, match=r"finetune.init_adapter: the adapter's settings differ .*r 4 vs 8"):
        load_init_adapter(lora.prepare(lora.load_model(tiny_lm_dir, other), other), adapter, lora)
    with pytest.raises(ConfigError, match="not a PEFT adapter folder"):
        load_init_adapter(model, tmp_path, lora)
    # GRPO from the adapter: its exact match before training is the adapter's own (same greedy decoding)
    g = _grpo_cfg(method="lora", max_steps=1, init_adapter=str(adapter), learning_rate=1e-9,
                  grpo={"rewards": [{"name": "judge", "model": "start"}], "num_generations": 2,
                        "max_completion_length": 4, "eval_examples": 2})
    m = finetune(tiny_lm_dir, sft_records(2), sft_records(2), tmp_path / "grpo", g, SYSTEM_PROMPT)
    assert m["init_adapter"] == str(adapter) and m["steps"] == 1


# --------------------------------------------------------------------------- reward model


def _pairs(prompts: list[str], flip: bool = False) -> list[dict]:
    """chosen: the right JSON, rejected: a refusal (they differ in an obvious way); ``flip`` swaps them."""
    from edgeft.data.intents import generate

    recs = {r["prompt"]: r["response"] for r in generate(60, 1, seed=5)[0]}
    refusal = "sorry, I cannot help with that."
    return [{"prompt": p, "chosen": refusal if flip else recs[p], "rejected": recs[p] if flip else refusal,
             "response": recs[p]} for p in prompts]


def _train_reward_model(model_dir, out: Path, flip: bool) -> dict:
    from edgeft.config.schema import FinetuneConfig
    from edgeft.data.intents import generate
    from edgeft.finetune import finetune

    prompts = [r["prompt"] for r in generate(60, 1, seed=5)[0]]
    cfg = FinetuneConfig(objective="reward", method="lora", max_steps=24, batch_size=4, max_seq_len=128,
                         learning_rate=2e-2, lr_scheduler="constant", warmup_ratio=0.0, early_stopping=None,
                         lora={"r": 4, "alpha": 8})
    return finetune(model_dir, _pairs(prompts[:16], flip), _pairs(prompts[40:52], flip), out, cfg, SYSTEM_PROMPT)


@pytest.fixture(scope="module")
def reward_run(tiny_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward") / "out"
    return _train_reward_model(tiny_lm_dir, out, flip=False), out


def test_reward_model_orders_held_out_pairs(reward_run, tiny_lm_dir, tmp_path):
    """Held-out pairs (other requests) are ordered after training, whichever answer the pairs prefer: the JSON
    over a refusal, and (a second model) the refusal over the JSON."""
    m, out = reward_run
    assert m["eval_pairs"] == 12
    assert m["eval_pair_accuracy"] == 1.0, m
    assert m["eval_mean_margin"] > m["mean_margin_before"] and m["eval_mean_margin"] > 0
    assert len(json.loads((out / "adapter" / "config.json").read_text())["id2label"]) == 1  # one score
    flipped = _train_reward_model(tiny_lm_dir, tmp_path / "flip", flip=True)
    assert flipped["eval_pair_accuracy"] == 1.0, flipped
    # the untrained scorer cannot order both directions: training did it
    assert min(m["pair_accuracy_before"], flipped["pair_accuracy_before"]) < 0.5


def test_reward_model_reloads_and_scores_grpo_completions(reward_run, tiny_lm_dir):
    from transformers import AutoTokenizer

    from edgeft.config.schema import RewardSpec
    from edgeft.finetune import load_trained
    from edgeft.finetune.rewards import RewardContext, reward_model

    m, out = reward_run
    reloaded = load_trained(out / "adapter")
    assert reloaded.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    f = reward_model(RewardSpec(name="reward-model", path=str(out / "adapter")), RewardContext(tok, SYSTEM_PROMPT))
    pair = _pairs([_pairs_prompt()])[0]
    prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": pair["prompt"]}]
    good, bad = f(prompts=[prompt, prompt], completions=[_conv(pair["chosen"]), _conv(pair["rejected"])])
    assert good > bad
    assert f.__name__ == "reward_model"


def _pairs_prompt() -> str:
    from edgeft.data.intents import generate

    return generate(60, 1, seed=5)[0][55]["prompt"]  # not among the training or eval pairs above


def test_reward_model_path_must_be_a_reward_model(tiny_lm_dir, tmp_path):
    from edgeft.config.schema import RewardSpec
    from edgeft.errors import ConfigError
    from edgeft.finetune.rewards import RewardContext, reward_model

    with pytest.raises(ConfigError, match="is not a reward model"):
        reward_model(RewardSpec(name="reward-model", path=str(tiny_lm_dir)), RewardContext(None))


def test_reward_recipe_stops_after_finetune(tiny_lm_dir, tmp_path):
    from edgeft.errors import UnsupportedError
    from edgeft.pipeline.run import Pipeline
    from edgeft.recipe import load_recipe

    d = tiny_recipe_dict(tiny_lm_dir)
    d["data"]["generated"] = {"generator": "intent-preferences", "n_train": 8, "n_eval": 4, "seed": 0}
    d["finetune"].update({"objective": "reward", "max_steps": 2, "eval_examples": 0})
    path = write_recipe(tmp_path / "r.yaml", d)
    p = Pipeline(load_recipe(path), path, tmp_path / "runs")
    p.execute(only=["data", "finetune"])
    rec = p.run.record("finetune")
    assert rec["metrics"]["objective"] == "reward" and rec["metrics"]["eval_pairs"] == 4
    with pytest.raises(UnsupportedError, match="objective reward trains a scorer"):
        p.task.merge(tmp_path / "m")
