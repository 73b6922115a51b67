"""The causal-LM objectives beyond sft (clm, dpo, distill, multitask) on tiny random LLaMAs built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SYSTEM_PROMPT, build_tokenizer, tiny_recipe_dict, write_recipe

BASE = dict(batch_size=8, max_seq_len=64, learning_rate=5e-3, eval_examples=4, early_stopping=None)


def _cfg(objective: str, **kw):
    from edgeft.config.schema import FinetuneConfig

    return FinetuneConfig(objective=objective, **{**BASE, "epochs": 3, **kw})


def _losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["loss_history"]]


def _went_down(metrics: dict) -> bool:
    ls = _losses(metrics)
    assert len(ls) >= 4, ls
    k = max(1, len(ls) // 3)
    return sum(ls[-k:]) / k < sum(ls[:k]) / k


def _intent_text(n: int, seed: int) -> str:
    from edgeft.data.intents import generate

    train, _ = generate(n, 1, seed)
    return "".join(f"{r['prompt']} -> {r['response']}\n" for r in train)


@pytest.fixture(scope="module")
def deep_lm_dir(tmp_path_factory) -> Path:
    """A 4-block tiny LLaMA (the distillation teacher)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("deep-lm") / "model"
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- clm


def test_text_split_is_a_deterministic_heldout_tail(tmp_path):
    from edgeft.data.splits import text_records

    text = "".join(f"line {i} of the corpus\n" for i in range(200))
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    train, ev = text_records(f, 0.1, chunk_chars=300)
    joined_train, joined_eval = "".join(r["text"] for r in train), "".join(r["text"] for r in ev)
    assert joined_train + joined_eval == text
    assert joined_eval.startswith("line 18") and joined_eval.endswith("line 199 of the corpus\n")
    assert len(joined_eval) == pytest.approx(0.1 * len(text), rel=0.1)
    assert all(len(r["text"]) < 300 + 40 for r in train)
    assert (train, ev) == text_records(f, 0.1, chunk_chars=300)


def test_clm_loss_goes_down_and_perplexity_improves(tiny_lm_dir, tmp_path):
    from edgeft.finetune import finetune

    train = [{"text": _intent_text(60, 0)}]
    ev = [{"text": _intent_text(12, 5)}]
    m = finetune(tiny_lm_dir, train, ev, tmp_path / "out", _cfg("clm", epochs=4), SYSTEM_PROMPT)
    assert _went_down(m), _losses(m)
    assert m["block_size"] == 64 and m["train_blocks"] >= 8
    assert m["eval_perplexity"] < m["base_eval_perplexity"]
    assert m["eval_perplexity"] == pytest.approx(2.718281828 ** m["eval_loss"], rel=1e-6)
    assert all("eval_perplexity" in h for h in m["eval_history"])
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_clm_text_shorter_than_a_block_fails_clearly(tiny_lm_dir, tmp_path):
    from edgeft.errors import DataError
    from edgeft.finetune import finetune

    with pytest.raises(DataError, match="shorter than one block"):
        finetune(tiny_lm_dir, [{"text": _intent_text(40, 0)}], [{"text": "too short"}], tmp_path / "o", _cfg("clm"))


# --------------------------------------------------------------------------- dpo


def test_preference_pairs_are_deterministic_and_plausibly_wrong():
    from edgeft.data.generators import GENERATORS
    from edgeft.data.intents import generate

    train, ev = GENERATORS.get("intent-preferences")(60, 10, 3)
    assert (train, ev) == GENERATORS.get("intent-preferences")(60, 10, 3)
    plain_train, _ = generate(60, 10, 3)
    assert [r["prompt"] for r in train] == [r["prompt"] for r in plain_train]
    for r, p in zip(train, plain_train):
        assert r["chosen"] == r["response"] == p["response"]
        assert r["rejected"] != r["chosen"]
        wrong, right = json.loads(r["rejected"]), json.loads(r["chosen"])
        assert isinstance(wrong, dict) and "intent" in wrong
        # one thing differs: a slot value, a dropped slot, or the intent
        diff = {k for k in set(wrong) | set(right) if wrong.get(k) != right.get(k)}
        assert len(diff) == 1, (r["chosen"], r["rejected"])


def test_dpo_learns_preferences_and_reports_reward_accuracy(tiny_lm_dir, tmp_path):
    from edgeft.data.preferences import generate
    from edgeft.finetune import finetune

    train, _ = generate(32, 1, 0)
    m = finetune(tiny_lm_dir, train, train[:16], tmp_path / "out", _cfg("dpo", epochs=4, learning_rate=1e-2),
                 SYSTEM_PROMPT)
    assert _losses(m)[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert _went_down(m), _losses(m)
    assert m["reference"] == "base with the adapter disabled"
    assert 0.5 < m["reward_accuracy"] <= 1.0  # on pairs it trained on
    assert m["reward_margin"] > 0
    assert m["reward_chosen"] - m["reward_rejected"] == pytest.approx(m["reward_margin"], abs=1e-4)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


# --------------------------------------------------------------------------- distill


def test_student_keeps_teacher_blocks_with_their_weights(deep_lm_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.config.schema import StudentConfig
    from edgeft.errors import ConfigError
    from edgeft.finetune.objectives.distill import kept_layers, make_student

    teacher = AutoModelForCausalLM.from_pretrained(deep_lm_dir, torch_dtype=torch.float32)
    keep = kept_layers(4, StudentConfig(keep_every=2))
    assert keep == [0, 2]
    student = make_student(teacher, keep)
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert teacher.config.num_hidden_layers == 4 and len(teacher.model.layers) == 4  # teacher untouched
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for name, value in s_sd.items():
        src = name
        if ".layers." in name:
            i = int(name.split(".layers.")[1].split(".")[0])
            src = name.replace(f".layers.{i}.", f".layers.{keep[i]}.")
        assert torch.equal(value, t_sd[src]), name
    assert [blk.self_attn.layer_idx for blk in student.model.layers] == [0, 1]
    if getattr(student.config, "layer_types", None) is not None:
        assert len(student.config.layer_types) == 2
    # it saves and reloads as a smaller model of the same architecture
    student.save_pretrained(tmp_path / "s")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert again.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, student.eval()(ids).logits, atol=1e-6)
    assert kept_layers(4, StudentConfig(keep_layers=[1, 3])) == [1, 3]
    with pytest.raises(ConfigError, match="keep_layers"):
        kept_layers(4, StudentConfig(keep_layers=[2, 7]))
    with pytest.raises(ConfigError, match="drop at least one"):
        kept_layers(4, StudentConfig(keep_every=1))


def test_distill_trains_a_smaller_student_and_reports_agreement(deep_lm_dir, tmp_path):
    from edgeft.data.intents import generate
    from edgeft.finetune import finetune
    from edgeft.merge import merge

    train, ev = generate(32, 8)
    cfg = _cfg("distill", epochs=4, learning_rate=1e-2,
               distill={"temperature": 2.0, "alpha": 0.0, "student": {"keep_every": 2}})
    m = finetune(deep_lm_dir, train, ev, tmp_path / "out", cfg, SYSTEM_PROMPT)
    assert _went_down(m), _losses(m)
    assert (m["teacher_layers"], m["student_layers"], m["kept_layers"]) == (4, 2, [0, 2])
    assert m["student_params"] < m["teacher_params"]
    assert m["student_to_teacher_params"] == pytest.approx(m["student_params"] / m["teacher_params"])
    for k in ("top1_agreement", "kl", "student_token_accuracy", "teacher_token_accuracy"):
        assert k in m["agreement_before"] and k in m["agreement_after"]
    assert 0.0 <= m["eval_top1_agreement"] <= 1.0
    assert m["agreement_after"]["kl"] < m["agreement_before"]["kl"]
    # lora on the student: the student base ships next to the adapter and the merge folds into it
    student = tmp_path / "out" / "student"
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 2
    res = merge(tmp_path / "out" / "adapter", tmp_path / "merged", base_model=student)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_hidden_layers"] == 2
    assert res  # parity-checked inside merge()


def test_kd_loss_is_zero_for_identical_logits_and_scales_with_temperature():
    import torch

    from edgeft.finetune.objectives.distill import kd_loss

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    total, kd, ce = kd_loss(s, s.clone(), labels, 2.0, 0.0)
    assert kd.item() == pytest.approx(0.0, abs=1e-6) and total.item() == pytest.approx(0.0, abs=1e-6)
    total, kd, ce = kd_loss(s, t, labels, 1.0, 0.5)
    assert kd.item() > 0 and total.item() == pytest.approx(kd.item() + 0.5 * ce.item(), rel=1e-6)


# --------------------------------------------------------------------------- multitask


def _multitask_cfg(**kw):
    return _cfg("multitask", multitask={"tasks": [
        {"name": "intents", "generated": {"generator": "intents"}, "weight": 3.0, "system_prompt": SYSTEM_PROMPT},
        {"name": "verb", "generated": {"generator": "intents"}, "weight": 1.0,
         "system_prompt": "Say the first word.", "metric": "accuracy"}]}, **kw)


def _multitask_records():
    from edgeft.data.intents import generate

    a_tr, a_ev = generate(24, 6, 0)
    b_tr, b_ev = generate(24, 6, 1)
    verb = lambda rs: [{"task": "verb", "prompt": r["prompt"], "response": r["prompt"].split()[0]} for r in rs]  # noqa: E731
    return ([dict(r, task="intents") for r in a_tr] + verb(b_tr), [dict(r, task="intents") for r in a_ev] + verb(b_ev))


def test_multitask_reports_each_task_with_its_metric(tiny_lm_dir, tmp_path):
    from edgeft.finetune import finetune

    train, ev = _multitask_records()
    m = finetune(tiny_lm_dir, train, ev, tmp_path / "out", _multitask_cfg(), SYSTEM_PROMPT)
    assert _went_down(m), _losses(m)
    t = m["tasks"]
    assert set(t) == {"intents", "verb"}
    assert {"exact_match", "json_valid"} <= set(t["intents"]) and "accuracy" in t["verb"]
    assert all(0.0 <= v <= 1.0 for v in (t["intents"]["exact_match"], t["verb"]["accuracy"]))
    # weight 3:1 over equal-sized tasks: the mixture repeats the heavier task's examples more often
    assert t["intents"]["n_mixed"] > 2 * t["verb"]["n_mixed"]
    assert t["verb"]["n_mixed"] >= t["verb"]["n_train"] == 24
    assert all("eval_intents_exact_match" in h and "eval_verb_accuracy" in h for h in m["eval_history"])


def test_task_score_accuracy_compares_the_first_word():
    from edgeft.metrics.text import task_score

    assert task_score("Positive. The review is kind", "positive", "accuracy") == {"accuracy": 1.0}
    assert task_score("negative", "positive", "accuracy") == {"accuracy": 0.0}
    assert task_score('{"a":1}', '{"a":1}', "exact_match") == {"exact_match": 1.0, "json_valid": 1.0}


def test_multitask_without_tasks_fails_naming_the_key(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.finetune import finetune

    with pytest.raises(ConfigError, match="finetune.multitask"):
        finetune(tiny_lm_dir, [{"task": "a", "prompt": "x", "response": "y"}], [], tmp_path / "o", _cfg("multitask"))


# --------------------------------------------------------------------------- data stage writes the objective's fields


def _pipeline(tmp_path, tiny_lm_dir, **changes):
    from edgeft.recipe import load_recipe
    from edgeft.pipeline.run import Pipeline

    d = tiny_recipe_dict(tiny_lm_dir)
    for k, v in changes.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    path = write_recipe(tmp_path / "r.yaml", d)
    return Pipeline(load_recipe(path), path, tmp_path / "runs")


def test_data_stage_writes_objective_fields(tiny_lm_dir, tmp_path):
    from edgeft.data.readers import read_records

    text = tmp_path / "corpus.txt"
    text.write_text(_intent_text(50, 0))
    p = _pipeline(tmp_path, tiny_lm_dir, data={"generated": None, "text": {"path": "corpus.txt", "eval_fraction": 0.2}},
                  finetune={"objective": "clm"})
    out = tmp_path / "clm-data"
    p.stage_data(out)
    assert set(read_records(out / "train.jsonl")[0]) == {"text"}

    p = _pipeline(tmp_path, tiny_lm_dir, data={"generated": {"generator": "intent-preferences", "n_train": 8,
                                                              "n_eval": 4}}, finetune={"objective": "dpo"})
    p.stage_data(tmp_path / "dpo-data")
    rec = read_records(tmp_path / "dpo-data" / "eval.jsonl")[0]
    assert {"prompt", "chosen", "rejected", "response"} <= set(rec)

    p = _pipeline(tmp_path, tiny_lm_dir, finetune={"objective": "multitask", "multitask": {"tasks": [
        {"name": "a", "generated": {"n_train": 5, "n_eval": 2}}, {"name": "b", "generated": {"n_train": 3, "n_eval": 2,
                                                                                          "seed": 4}}]}})
    res = p.stage_data(tmp_path / "mt-data")
    assert (res["n_train"], res["n_eval"]) == (8, 4)
    assert [r["task"] for r in read_records(tmp_path / "mt-data" / "train.jsonl")] == ["a"] * 5 + ["b"] * 3


def test_data_stage_missing_objective_field_names_file_row_and_field(tiny_lm_dir, tmp_path):
    from edgeft.errors import DataError

    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d", "chosen": "e"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps(rows[0]) + "\n")
    p = _pipeline(tmp_path, tiny_lm_dir, data={"generated": None, "files": {"train": "train.jsonl",
                                                                              "eval": "eval.jsonl"}},
                  finetune={"objective": "dpo"})
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing field 'rejected'"):
        p.stage_data(tmp_path / "d")
    p = _pipeline(tmp_path, tiny_lm_dir, finetune={"objective": "dpo"})  # intents generator has no pairs
    with pytest.raises(DataError, match=r"row 1: missing field 'chosen' needed by objective 'dpo'"):
        p.stage_data(tmp_path / "d2")


def test_dpo_refuses_pairs_that_truncation_makes_identical(tiny_lm_dir, tmp_path):
    from edgeft.data.preferences import generate
    from edgeft.errors import DataError
    from edgeft.finetune import finetune

    train, _ = generate(4, 1, 0)
    with pytest.raises(DataError, match="identical once truncated to finetune.max_seq_len=32"):
        finetune(tiny_lm_dir, train, train, tmp_path / "out", _cfg("dpo", max_seq_len=32), SYSTEM_PROMPT)


def test_greedy_task_metrics_uses_each_records_prompt_and_metric():
    """One scoring loop for finetune eval, multitask and validate: a record's own system prompt
    and metric are used, the primary score mixes metrics, per-task means are kept."""
    from edgeft.metrics.text import greedy_task_metrics

    class Tok:
        eos_token_id = 0

        def get_vocab(self):
            return {}

        def apply_chat_template(self, msgs, **kw):
            return [len(msgs[0]["content"])]  # the "prompt" encodes the system prompt's length

        def decode(self, ids, skip_special_tokens=True):
            return {5: '{"a":1}', 6: "positive", 7: "wrong"}[ids[0]]

    class LM:
        seen = []

        def generate(self, prompts, n, stops):
            LM.seen += [p[0] for p in prompts]
            return [[p[0]] for p in prompts]

    recs = [{"task": "json", "prompt": "x", "response": '{"a":1}'},
            {"task": "sent", "prompt": "y", "response": "positive", "system_prompt": "Label!", "metric": "accuracy"},
            {"task": "sent", "prompt": "z", "response": "negative", "system_prompt": "Label!", "metric": "accuracy"}]
    import edgeft.data.templates as t

    orig = t.prompt_ids
    t.prompt_ids = lambda tok, sp, p: [{"Parse.": 5, "Label!": 6}[sp] + (p == "z")]
    try:
        out = greedy_task_metrics(LM(), Tok(), recs, "Parse.", misses=5)
    finally:
        t.prompt_ids = orig
    assert LM.seen == [5, 6, 7]
    assert out["exact_match"] == pytest.approx(2 / 3)  # json EM 1, sentiment accuracy 1 and 0
    assert out["per_task"] == {"json": {"exact_match": 1.0, "json_valid": 1.0}, "sent": {"accuracy": 0.5}}
    assert out["misses_sample"] == [{"prompt": "z", "expected": "negative", "got": "wrong"}]


def test_accelerate_config_is_relative_to_the_recipe(tiny_lm_dir, tmp_path, monkeypatch):
    """finetune.accelerate_config names a file next to the recipe, wherever edgeft is run from."""
    import edgeft.finetune

    (tmp_path / "ds.yaml").write_text("compute_environment: LOCAL_MACHINE\n")
    p = _pipeline(tmp_path, tiny_lm_dir, finetune={"processes": 2, "accelerate_config": "ds.yaml"})
    p.stage_data(p.run.stage_dir("data"))
    p.keys = {"finetune": "test"}  # normally the stage hashes (edgeft.run computes them)
    seen = {}
    monkeypatch.setattr(edgeft.finetune, "finetune", lambda path, tr, ev, out, cfg, sp, work_dir: seen.update(
        conf=cfg.accelerate_config) or {})
    monkeypatch.chdir(tmp_path.parent)
    p.stage_finetune(tmp_path / "ft")
    assert seen["conf"] == str(tmp_path / "ds.yaml")


def test_resume_skips_a_checkpoint_the_kill_left_half_written(tmp_path):
    """A run killed while the Trainer writes checkpoint-16 leaves it without trainer_state.json;
    resume takes checkpoint-8 (step order, not name order) and removes the broken one."""
    from edgeft.finetune.objectives.common import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for n, complete in ((8, True), (16, False), (4, True)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "README.md").write_text("x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert not (tmp_path / "checkpoint-16").exists() and (tmp_path / "checkpoint-4").is_dir()
