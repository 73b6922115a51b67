"""Method specifics the matrix does not pin down: the gradual-unfreeze schedule, freeze/bitfit parameter
counts, merge refusal (and the pipeline refusing before training), qlora on an int8 base, the CLI's
method list."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import SYSTEM_PROMPT, tiny_records
from edgeft.errors import ConfigError, UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cfg(**kw):
    from edgeft.config.schema import FinetuneConfig

    base = dict(epochs=1, batch_size=4, max_seq_len=48, learning_rate=1e-2, lr_scheduler="constant",
                warmup_ratio=0.0, eval_examples=0, early_stopping=None, lora={"r": 4, "alpha": 8})
    base.update(kw)
    return FinetuneConfig(**base)


def load(model_dir, task="causal-lm", **kw):
    from edgeft.finetune import METHODS

    return METHODS.get("lora").load_model(model_dir, cfg(**kw), task)


def trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- gradual unfreeze


def test_gradual_unfreeze_schedule_every_k_steps_and_floor():
    from edgeft.config.schema import UnfreezeConfig
    from edgeft.finetune.methods.gradual_unfreeze import unfrozen_blocks

    u = UnfreezeConfig(start=1, every_steps=2)
    got = [unfrozen_blocks(4, u, s, steps_per_epoch=99) for s in range(9)]
    assert got == [[3], [3], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    u = UnfreezeConfig(start=2, every_steps=1, floor=1)
    assert [unfrozen_blocks(4, u, s, 99) for s in range(4)] == [[2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    # default: one more block per epoch
    u = UnfreezeConfig(start=1)
    assert [unfrozen_blocks(4, u, s, steps_per_epoch=3) for s in (0, 2, 3, 5, 6, 9, 30)] == \
        [[3], [3], [2, 3], [2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_gradual_unfreeze_callback_sets_trainable_blocks_per_step(tiny_lm_dir):
    from edgeft.finetune import METHODS

    m = METHODS.get("gradual-unfreeze")
    c = cfg(method="gradual-unfreeze", unfreeze={"start": 1})  # one more block per epoch
    model = m.prepare(load(tiny_lm_dir), c)
    # before training every block the schedule reaches is trainable, so the optimizer holds its weights
    assert {n.split(".")[2] for n in trainable(model) if n.startswith("model.layers.")} == {"0", "1"}
    (cb,) = m.callbacks(model, c)
    args = SimpleNamespace(gradient_accumulation_steps=1, num_train_epochs=3)

    def blocks():
        return sorted({int(n.split(".")[2]) for n in trainable(model) if n.startswith("model.layers.")})

    cb.on_train_begin(args, SimpleNamespace(global_step=0, max_steps=6), None, train_dataloader=[0, 1])
    assert blocks() == [1]
    assert "model.norm.weight" in trainable(model) and "model.embed_tokens.weight" in trainable(model)  # tied head
    cb.on_step_begin(args, SimpleNamespace(global_step=1), None)
    assert blocks() == [1]
    cb.on_step_begin(args, SimpleNamespace(global_step=2), None)  # epoch 2 (2 steps per epoch)
    assert blocks() == [0, 1]
    # a resumed run at step 5 starts from the schedule, not from the top block
    model2 = m.prepare(load(tiny_lm_dir), c)
    (cb2,) = m.callbacks(model2, c)
    cb2.on_train_begin(args, SimpleNamespace(global_step=5, max_steps=6), None, train_dataloader=[0, 1])
    assert sorted({int(n.split(".")[2]) for n in trainable(model2) if n.startswith("model.layers.")}) == [0, 1]


def test_gradual_unfreeze_rejects_bad_schedules(tiny_lm_dir):
    from edgeft.finetune import METHODS

    m = METHODS.get("gradual-unfreeze")
    with pytest.raises(ConfigError, match=r"unfreeze.floor: 2 must be below the model's 2 blocks"):
        m.prepare(load(tiny_lm_dir), cfg(unfreeze={"floor": 2}))
    with pytest.raises(ConfigError, match=r"unfreeze.start: 3 blocks do not fit"):
        m.prepare(load(tiny_lm_dir), cfg(unfreeze={"start": 3}))
    with pytest.raises(UnsupportedError, match="processes: 1"):
        m.prepare(load(tiny_lm_dir), cfg(processes=2))


# --------------------------------------------------------------------------- freeze / bitfit counts


def _llama_block_params(c) -> int:
    h, i, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q, o; k, v; gate, up, down; two RMSNorm gains


@pytest.mark.parametrize("top,head", [(1, True), (2, True), (1, False), (2, False), (0, True)])
def test_freeze_trains_top_n_blocks_and_head_counts(tiny_lm_dir, top, head):
    from edgeft.finetune import METHODS

    model = METHODS.get("freeze").prepare(load(tiny_lm_dir), cfg(freeze={"top_blocks": top, "train_head": head}))
    c = model.config
    tied_head = c.vocab_size * c.hidden_size + c.hidden_size  # the tied LM head (= embeddings) + final norm
    assert sum(trainable(model).values()) == top * _llama_block_params(c) + (tied_head if head else 0)
    layers = {int(n.split(".")[2]) for n in trainable(model) if n.startswith("model.layers.")}
    assert layers == set(range(c.num_hidden_layers - top, c.num_hidden_layers))


def test_freeze_on_a_classifier_and_its_errors(tiny_cls_dir, tiny_lm_dir):
    from edgeft.finetune import METHODS

    m = METHODS.get("freeze")
    model = m.prepare(load(tiny_cls_dir, "seq-cls"), cfg(freeze={"top_blocks": 1}))
    names = trainable(model)
    assert {n.split(".")[3] for n in names if n.startswith("bert.encoder.layer.")} == {"1"}
    assert not any(n.startswith("bert.embeddings.") for n in names)
    h = model.config.hidden_size
    assert sum(v for n, v in names.items() if not n.startswith("bert.encoder.")) == (h * h + h) + (2 * h + 2)
    with pytest.raises(ConfigError, match="classification head random"):
        m.prepare(load(tiny_cls_dir, "seq-cls"), cfg(freeze={"top_blocks": 1, "train_head": False}))
    with pytest.raises(ConfigError, match=r"top_blocks: 5 > the model's 2 blocks"):
        m.prepare(load(tiny_lm_dir), cfg(freeze={"top_blocks": 5}))
    with pytest.raises(ConfigError, match="train nothing"):
        m.prepare(load(tiny_lm_dir), cfg(freeze={"top_blocks": 0, "train_head": False}))


def test_bitfit_biases_on_bert_norm_gains_on_llama(tiny_cls_dir, tiny_lm_dir):
    import torch

    from edgeft.finetune import METHODS

    m = METHODS.get("bitfit")
    bert = m.prepare(load(tiny_cls_dir, "seq-cls"), cfg())
    names = set(trainable(bert))
    assert names == {n for n, _ in bert.named_parameters() if n.endswith(".bias")} | {"classifier.weight"}
    llama = m.prepare(load(tiny_lm_dir), cfg())
    c = llama.config
    assert all(n.endswith("norm.weight") for n in trainable(llama))
    assert sum(trainable(llama).values()) == (2 * c.num_hidden_layers + 1) * c.hidden_size
    bare = load(tiny_lm_dir)  # no bias and no norm gains: nothing bitfit could train
    bare.model.norm = torch.nn.Identity()
    for layer in bare.model.layers:
        layer.input_layernorm = layer.post_attention_layernorm = torch.nn.Identity()
    with pytest.raises(UnsupportedError, match="no bias terms and no normalization gains"):
        m.prepare(bare, cfg())


# --------------------------------------------------------------------------- merge refusal


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning", "p-tuning", "adapter"])
def test_merge_refuses_in_one_line_saying_why_and_what_instead(method, tiny_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    from edgeft.finetune import METHODS, save_trained
    from edgeft.merge import merge

    m = METHODS.get(method)
    c = cfg(method=method, prompt={"num_virtual_tokens": 4})
    try:
        model = m.prepare(m.load_model(tiny_lm_dir, c, "causal-lm"), c)
    except UnsupportedError as e:  # adapter without the `adapters` library
        pytest.skip(str(e))
    target = save_trained(model, AutoTokenizer.from_pretrained(str(tiny_lm_dir)), m, tmp_path / "ft")
    with pytest.raises(UnsupportedError) as err:
        merge(target, tmp_path / "merged", base_model=tiny_lm_dir)
    msg = str(err.value)
    assert "\n" not in msg and f"method {method}" in msg
    assert "use method lora, dora or ia3" in msg
    assert ("virtual tokens" in msg) if method != "adapter" else ("cannot fold into the weights" in msg)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_prompt_adapter_without_the_marker(tiny_lm_dir, tmp_path):
    """An adapter folder written by PEFT alone (no edgeft_method.json) is recognised from its config."""
    from edgeft.finetune import METHODS
    from edgeft.merge import merge

    c = cfg(prompt={"num_virtual_tokens": 4})
    model = METHODS.get("prompt-tuning").prepare(load(tiny_lm_dir), c)
    model.save_pretrained(str(tmp_path / "a"))
    with pytest.raises(UnsupportedError, match=r"prompt_tuning learns virtual tokens"):
        merge(tmp_path / "a", tmp_path / "merged", base_model=tiny_lm_dir)


def test_pipeline_refuses_unmergeable_method_before_training(tiny_lm_dir, tmp_path):
    from conftest import tiny_recipe_dict
    from edgeft.config.schema import Recipe
    from edgeft.pipeline.run import Pipeline

    d = tiny_recipe_dict(tiny_lm_dir)
    d["finetune"]["method"] = "prefix-tuning"
    p = Pipeline(Recipe.model_validate(d), None, tmp_path / "runs")
    with pytest.raises(UnsupportedError, match=r"finetune.method 'prefix-tuning' cannot reach the merge stage: "
                                               r".*use method lora, dora or ia3"):
        p.execute()
    assert not (tmp_path / "runs").exists(), "nothing may be written before the refusal"
    seen = []
    p.execute(only=["data", "finetune"], dry_run=True, on_stage=lambda s, st: seen.append(s))
    assert seen == ["data", "finetune"]  # data + finetune alone (`edgeft finetune`) is allowed
    d["finetune"]["method"] = "prefix-tunning"
    with pytest.raises(ConfigError, match=r"did you mean 'prefix-tuning'"):
        Pipeline(Recipe.model_validate(d), None, tmp_path / "runs").execute(dry_run=True)


def test_copy_merge_reports_parity_for_a_whole_model(tiny_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    from edgeft.finetune import METHODS, save_trained
    from edgeft.merge import merge

    m = METHODS.get("bitfit")
    model = m.prepare(load(tiny_lm_dir), cfg())
    target = save_trained(model, AutoTokenizer.from_pretrained(str(tiny_lm_dir)), m, tmp_path / "ft")
    assert target.name == "model" and json.loads((target / "edgeft_method.json").read_text())["merge"] == "copy"
    rep = merge(target, tmp_path / "merged", sample_texts=["set a timer", "lights off"], tolerance=1e-5)
    assert rep["mode"] == "copy" and rep["passed"] and rep["max_abs_logit_diff"] <= 1e-5
    assert json.loads((tmp_path / "merged" / "merge_report.json").read_text())["samples"] == 2


# --------------------------------------------------------------------------- qlora int8


def test_qlora_int8_base_trains_and_merges_into_fp32(tiny_lm_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.finetune import METHODS, OBJECTIVES, finetune
    from edgeft.merge import merge

    c = cfg(method="qlora", qlora={"bits": 8}, epochs=2)
    try:
        base = METHODS.get("qlora").load_model(tiny_lm_dir, c, "causal-lm")
        with torch.no_grad():
            base(input_ids=torch.tensor([[5, 6, 7]]))
    except Exception as e:  # noqa: BLE001 - any failure means: bitsandbytes int8 does not run here
        pytest.skip(f"bitsandbytes int8 does not run on this machine: {type(e).__name__}: {e}")
    assert any(type(mod).__name__ == "Linear8bitLt" for mod in base.modules())
    recs = tiny_records(OBJECTIVES.get("sft"), 4)
    m = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "out", c, SYSTEM_PROMPT, work_dir=tmp_path / "work")
    assert m["method"] == "qlora" and m["steps"] == 2 and m["trainable_params"] > 0
    rep = merge(tmp_path / "out" / "adapter", tmp_path / "merged", base_model=tiny_lm_dir,
                sample_texts=["set a timer for 5 minutes"], tolerance=1e-4)
    assert rep["passed"] and rep["mode"] == "merge"
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert not any("8bit" in type(mod).__name__ for mod in merged.modules())
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


# --------------------------------------------------------------------------- CLI


def test_cli_finetune_help_lists_methods_and_unknown_method_suggests():
    from click.testing import CliRunner

    from edgeft.cli import cli
    from edgeft.finetune import METHODS

    r = CliRunner().invoke(cli, ["finetune", "--help"])
    assert r.exit_code == 0
    flat = " ".join(r.output.split())
    assert all(name in flat for name in METHODS.names()), flat
    r = CliRunner().invoke(cli, ["finetune", "recipes/quickstart.yaml", "--method", "dorra"])
    assert isinstance(r.exception, ConfigError)  # edgeft.cli.main maps it to exit code 2
    assert "did you mean 'dora'?" in str(r.exception) and "gradual-unfreeze" in str(r.exception)


def test_prompt_tuning_init_text_starts_from_the_text_embeddings(tiny_lm_dir):
    import torch
    from transformers import AutoTokenizer

    from edgeft.finetune import METHODS

    text = "set a timer"
    ids = AutoTokenizer.from_pretrained(str(tiny_lm_dir))(text, add_special_tokens=False).input_ids
    model = METHODS.get("prompt-tuning").prepare(load(tiny_lm_dir), cfg(prompt={"num_virtual_tokens": len(ids),
                                                                              "init_text": text}))
    virtual = model.prompt_encoder["default"].embedding.weight
    words = model.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(virtual, words)
    assert set(trainable(model)) == {"prompt_encoder.default.embedding.weight"}


def test_classifier_adapter_from_a_quantized_base_reloads_in_fp32(tiny_cls_dir, tmp_path):
    """The classify objective keeps the (labelled) config next to the adapter; after qlora that
    config carries the bitsandbytes quantization_config, which must not re-quantize the reload."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgeft.finetune.registry import load_trained

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cls_dir), num_labels=2)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    peft.save_pretrained(str(tmp_path / "adapter"))
    config = AutoConfig.from_pretrained(str(tiny_cls_dir), num_labels=2)
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    config.save_pretrained(str(tmp_path / "adapter"))
    back = load_trained(tmp_path / "adapter", tiny_cls_dir)
    kinds = {type(m).__name__ for m in back.modules()}
    assert "Linear4bit" not in kinds and all(p.dtype == torch.float32 for p in back.parameters())
