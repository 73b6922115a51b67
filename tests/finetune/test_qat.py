"""Quantization-aware training (finetune.qat): the fake quantizer is in the forward, the weights it gives are on
torchao's int4 grid, the int4-torchao export stores exactly those weights, and the config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SYSTEM_PROMPT, sft_records
from edgeft.errors import ConfigError, UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cfg(**kw):
    from edgeft.config.schema import FinetuneConfig

    base = dict(max_steps=3, batch_size=4, max_seq_len=48, learning_rate=1e-2, lr_scheduler="constant",
                warmup_ratio=0.0, eval_examples=0, early_stopping=None, lora={"r": 4, "alpha": 8}, seed=0)
    base.update(kw)
    return FinetuneConfig(**base)


def qat(**kw):
    from edgeft.config.schema import QatConfig

    return QatConfig(**kw)


def _lora_model(tiny_lm_dir, **kw):
    """The tiny LLaMA with a LoRA adapter whose B is non-zero (so the merged weight differs from the base)."""
    import torch

    from edgeft.finetune import METHODS

    m = METHODS.get("lora")
    c = cfg(**kw)
    model = m.prepare(m.load_model(tiny_lm_dir, c, "causal-lm"), c)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model.eval()


def test_lora_qat_forward_is_the_merged_weight_on_the_int4_grid(tiny_lm_dir):
    import torch

    from edgeft.finetune.qat import prepare, snap_to_grid

    model = _lora_model(tiny_lm_dir)
    ids = torch.tensor([[5, 9, 23, 41, 7, 3, 60, 2]])
    with torch.no_grad():
        float_logits = model(input_ids=ids).logits
    inst = prepare(model, qat(group_size=32))
    assert len(inst.targets) == 14  # 2 blocks x (q, k, v, o, gate, up, down); not the head
    with torch.no_grad():
        qat_logits = model(input_ids=ids).logits
        inst.enable(False)
        off_logits = model(input_ids=ids).logits
    inst.remove()
    # the reference: the merge stage's plain model, its weights snapped onto the grid
    merged = model.merge_and_unload()
    assert snap_to_grid(merged, qat(group_size=32)) == 14
    with torch.no_grad():
        snapped_logits = merged(input_ids=ids).logits
    assert torch.allclose(off_logits, float_logits, atol=1e-5)  # switched off: the float model
    assert (qat_logits - float_logits).abs().max() > 1e-3  # on: the rounding shows
    assert (qat_logits - snapped_logits).abs().max() < 1e-4


def test_ia3_qat_forward_is_the_scaled_weight_on_the_int4_grid(tiny_lm_dir):
    import torch

    from edgeft.finetune import METHODS
    from edgeft.finetune.qat import prepare, snap_to_grid

    m = METHODS.get("ia3")
    c = cfg(method="ia3")
    model = m.prepare(m.load_model(tiny_lm_dir, c, "causal-lm"), c).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ia3_l" in n:
                p.uniform_(0.5, 1.5)
    ids = torch.tensor([[5, 9, 23, 41, 7, 3, 60, 2]])
    inst = prepare(model, qat(group_size=32))
    assert len(inst.targets) == 14  # the scaled k, v, down and the plain q, o, gate, up
    with torch.no_grad():
        qat_logits = model(input_ids=ids).logits
    inst.remove()
    merged = model.merge_and_unload()
    snap_to_grid(merged, qat(group_size=32))
    with torch.no_grad():
        assert (qat_logits - merged(input_ids=ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("symmetric", [False, True])
def test_snapped_weights_lie_on_the_int4_grid(tiny_lm_dir, symmetric):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.finetune.qat import snap_to_grid
    from edgeft.quantize.schemes.torchao_int4 import codes

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, torch_dtype=torch.float32)
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()  # [64, 128]
    snap_to_grid(model, qat(group_size=32, symmetric=symmetric))
    after = model.model.layers[0].mlp.down_proj.weight.detach().reshape(64, 4, 32)
    _, scale, zp = codes(before, 32, symmetric)
    scale = torch.from_numpy(scale)[..., None]
    if symmetric:
        steps = after / scale
        lo, hi = -8, 7
    else:  # the group's minimum plus whole steps: GGUF Q4_1's grid
        steps = (after - before.reshape(64, 4, 32).amin(-1, keepdim=True)) / scale
        lo, hi = 0, 15
        assert torch.allclose(steps, steps.round() + 0 * torch.from_numpy(zp)[..., None], atol=1e-3)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # whole steps of each group's scale
    assert steps.round().min() >= lo and steps.round().max() <= hi
    assert not torch.equal(before, after.reshape(64, 128))
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # head untouched, still tied


def test_min_max_grid_keeps_weights_already_on_a_q4_1_grid():
    """A weight that is already GGUF Q4_1 (min + step * q, both ends used) comes back unchanged."""
    import torch

    from edgeft.quantize.schemes.torchao_int4 import codes, fake_quantizer

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 4, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    w = (torch.rand(8, 4, 1, generator=g) * 0.1 * q - torch.rand(8, 4, 1, generator=g)).reshape(8, 128)
    assert torch.allclose(fake_quantizer(32, symmetric=False)(w), w, atol=1e-6)
    c, _, _ = codes(w, 32, symmetric=False)
    assert np.array_equal(c.reshape(8, 4, 32), q.numpy().astype(np.uint8))


def test_qat_training_changes_the_loss_and_marks_the_result(tiny_lm_dir, tmp_path):
    from edgeft.finetune import finetune
    from edgeft.finetune.registry import read_marker

    recs = sft_records(8)
    plain = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "plain", cfg(), SYSTEM_PROMPT, work_dir=tmp_path / "w1")
    q = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "qat", cfg(qat={"group_size": 32}), SYSTEM_PROMPT,
                 work_dir=tmp_path / "w2")
    again = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "plain2", cfg(), SYSTEM_PROMPT, work_dir=tmp_path / "w3")
    assert plain["train_loss"] == pytest.approx(again["train_loss"], rel=1e-6)  # same seed: same run
    assert abs(q["train_loss"] - plain["train_loss"]) > 1e-4  # the fake quantizer is in the training forward
    assert q["qat"]["fake_quantized_linears"] == 14 and q["qat"]["export_scheme"] == "int4-torchao"
    marker = read_marker(tmp_path / "qat" / "adapter")
    assert marker["qat"]["group_size"] == 32 and "qat" not in read_marker(tmp_path / "plain" / "adapter")
    # the saved adapter is a plain PEFT adapter (the forward patches are gone)
    assert json.loads((tmp_path / "qat" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_bitfit_qat_fake_quantizes_the_frozen_weights(tiny_lm_dir, tmp_path):
    from edgeft.finetune import finetune

    recs = sft_records(8)
    c = dict(method="bitfit", learning_rate=5e-3)
    plain = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "plain", cfg(**c), SYSTEM_PROMPT, work_dir=tmp_path / "a")
    q = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "qat", cfg(**c, qat={"start_step": 2}), SYSTEM_PROMPT,
                 work_dir=tmp_path / "b")
    assert q["qat"]["start_step"] == 2 and q["qat"]["fake_quantized_linears"] == 14
    assert abs(q["train_loss"] - plain["train_loss"]) > 1e-5  # step 3 ran fake-quantized


def test_start_step_switches_fake_quantization_on(tiny_lm_dir):
    from types import SimpleNamespace

    from edgeft.finetune.qat import callback, prepare

    inst = prepare(_lora_model(tiny_lm_dir), qat(start_step=5))
    assert not any(fq.enabled for fq in inst.quantizers)
    cb = callback(inst, 5)
    cb.on_step_begin(None, SimpleNamespace(global_step=4), None)
    assert not any(fq.enabled for fq in inst.quantizers)
    cb.on_step_begin(None, SimpleNamespace(global_step=5), None)
    assert all(fq.enabled for fq in inst.quantizers)
    inst.remove()


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_torchao_export_holds_the_weights_qat_trained_with(tiny_lm_dir, tmp_path, symmetric):
    """The grids match: logits of the int4-torchao artifact (fp32 compute) equal PyTorch's with the weights
    snapped onto the QAT grid; ORT's own RTN grid (int4-rtn) does not."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.exporters import export
    from edgeft.finetune.qat import snap_to_grid
    from edgeft.quantize.schemes import matmulnbits as mnb
    from edgeft.quantize.schemes import torchao_int4
    from edgeft.runtime.base import load_lm

    export(tiny_lm_dir, tmp_path / "onnx", preset="onnx-kv")
    src = tmp_path / "onnx" / "model.onnx"
    keep = {"accuracy_level": 1, "lm_head": "keep", "embeddings": "keep"}
    rep = torchao_int4.apply(src, tmp_path / "q.onnx", block_size=32, symmetric=symmetric, **keep)
    assert rep["quantized_matmuls"] == 14
    mnb.rtn4(src, tmp_path / "rtn.onnx", block_size=32, symmetric=symmetric, **keep)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, torch_dtype=torch.float32).eval()
    snap_to_grid(model, qat(group_size=32, symmetric=symmetric))
    ids = np.array([[5, 9, 23, 41, 7, 3, 60, 2, 11, 19]], np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits[0].numpy()

    def run(path):
        (tmp_path / "onnx" / path).write_bytes((tmp_path / path).read_bytes())
        return load_lm(tmp_path / "onnx" / path, "onnx").logits(ids[0])

    grid = np.abs(run("q.onnx") - ref).max()
    ort_grid = np.abs(run("rtn.onnx") - ref).max()
    assert grid < 1e-4, grid
    assert ort_grid > 100 * grid
    if symmetric:  # grid ort: the same check against ORT's own packer
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, torch_dtype=torch.float32).eval()
        snap_to_grid(model, qat(group_size=32, grid="ort"))
        with torch.no_grad():
            ref_ort = model(input_ids=torch.from_numpy(ids)).logits[0].numpy()
        assert np.abs(run("rtn.onnx") - ref_ort).max() < 1e-4
        assert np.abs(run("q.onnx") - ref_ort).max() > 100 * grid


def test_qat_config_errors(tiny_lm_dir, tmp_path):
    from conftest import tiny_recipe_dict, write_recipe
    from edgeft.finetune.qat import check, prepare
    from edgeft.recipe import load_recipe

    with pytest.raises(UnsupportedError, match="finetune.qat with method dora"):
        check(cfg(method="dora", qat={}))
    with pytest.raises(ConfigError, match="lora.dropout"):
        check(cfg(qat={}, lora={"r": 4, "alpha": 8, "dropout": 0.1}))
    check(cfg(method="ia3", qat={}))  # supported
    with pytest.raises(ValueError, match="grid ort is MatMulNBits' symmetric RTN grid"):
        qat(grid="ort", symmetric=False)
    with pytest.raises(ValueError, match="8da4w, whose int4 weights are symmetric"):
        qat(activations="int8-dynamic", symmetric=False)
    with pytest.raises(UnsupportedError, match="no linear layer"):
        prepare(_lora_model(tiny_lm_dir), qat(group_size=256))  # no input is 256 wide
    data = tiny_recipe_dict(tiny_lm_dir)
    data["finetune"]["qat"] = {"group_size": 32}
    with pytest.raises(ConfigError, match="int4-torchao"):  # QAT without its export scheme
        load_recipe(write_recipe(tmp_path / "a.yaml", data))
    data["quantize"].append({"name": "int4-qat", "scheme": "int4-torchao", "options": {"block_size": 64}})
    with pytest.raises(ConfigError, match="quantize.2.options.block_size: 64 differs from finetune.qat.group_size 32"):
        load_recipe(write_recipe(tmp_path / "b.yaml", data))
    data["quantize"][2]["options"]["block_size"] = 32
    data["quantize"][2]["options"]["symmetric"] = False
    with pytest.raises(ConfigError, match="quantize.2.options.symmetric: false differs from finetune.qat.symmetric"):
        load_recipe(write_recipe(tmp_path / "b2.yaml", data))
    data["quantize"][2]["options"]["symmetric"] = True
    load_recipe(write_recipe(tmp_path / "c.yaml", data))
    data["finetune"]["qat"]["grid"] = "ort"  # exported by int4-rtn, which the recipe has (symmetric, 32)
    load_recipe(write_recipe(tmp_path / "e.yaml", data))
    data["quantize"][1]["options"]["block_size"] = 64
    with pytest.raises(ConfigError, match="int4-rtn must be symmetric with block_size 32"):
        load_recipe(write_recipe(tmp_path / "f.yaml", data))
    data["quantize"][1]["options"]["block_size"] = 32
    data["finetune"]["qat"]["grid"] = "torchao"
    data["finetune"]["method"] = "dora"
    with pytest.raises(ConfigError, match="finetune.qat: method dora"):
        load_recipe(write_recipe(tmp_path / "d.yaml", data))


def test_decoding_reuses_the_rounded_weights_until_a_parameter_changes(tiny_lm_dir):
    import torch

    from edgeft.finetune.qat import prepare

    model = _lora_model(tiny_lm_dir)
    inst = prepare(model, qat())
    calls = []
    for fq in inst.quantizers:
        fq.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[5, 9, 23, 41]])
    with torch.no_grad():
        first = model(input_ids=ids).logits
        model(input_ids=ids)
        assert len(calls) == 14  # the second pass rounded nothing again
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.5)  # an optimizer-like update
        second = model(input_ids=ids).logits
        assert len(calls) == 15  # only the changed layer was rounded again
        model.disable_adapter_layers()
        model(input_ids=ids)
        assert len(calls) == 29  # the base alone: every layer again
    assert not torch.equal(first, second)
    model.enable_adapter_layers()
    model.train()
    model(input_ids=ids).logits.sum().backward()  # with autograd, always from the parameters
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    inst.remove()


def test_merge_of_a_qat_lora_writes_the_weights_on_the_grid(tiny_lm_dir, tmp_path):
    """Merge compares against the fake-quantized adapter model and writes the snapped weights; rounding them again
    (the int4 export) reproduces them."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.finetune import finetune
    from edgeft.merge import merge
    from edgeft.quantize.schemes.torchao_int4 import codes

    recs = sft_records(8)
    finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "ft", cfg(qat={"group_size": 32, "symmetric": False}),
             SYSTEM_PROMPT, work_dir=tmp_path / "w")
    rep = merge(tmp_path / "ft" / "adapter", tmp_path / "merged", base_model=tiny_lm_dir)
    assert rep["passed"] and rep["qat"]["snapped_linears"] == 14, rep
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
    w = m.model.layers[1].self_attn.q_proj.weight.detach()
    c, s, zp = codes(w, 32, symmetric=False)
    again = (c.reshape(-1, 2, 32) - zp[..., None]) * s[..., None]
    assert np.abs(again.reshape(w.shape) - w.numpy()).max() < 1e-6


def test_merge_of_a_symmetric_qat_lora_keeps_float_weights(tiny_lm_dir, tmp_path):
    from edgeft.finetune import finetune
    from edgeft.merge import merge

    recs = sft_records(8)
    finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "ft", cfg(qat={"group_size": 32}), SYSTEM_PROMPT,
             work_dir=tmp_path / "w")
    rep = merge(tmp_path / "ft" / "adapter", tmp_path / "merged", base_model=tiny_lm_dir)
    assert rep["passed"] and rep["max_abs_logit_diff"] < 1e-3 and rep["qat"]["snapped_linears"] == 0, rep


def test_preserve_distills_the_base_on_general_text(tiny_lm_dir, tmp_path):
    """finetune.qat.preserve: targets come from the base model (adapter and fake quantization off), the KL of the
    base from itself is 0, training logs it and lowers it against the fake-quantized model, and the run records it."""
    import torch

    from edgeft.config.schema import QatPreserveConfig
    from edgeft.finetune import finetune
    from edgeft.finetune.qat import build_preserve, prepare
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    model = _lora_model(tiny_lm_dir)  # B != 0: the adapter changes the model
    inst = prepare(model, qat(group_size=32))
    pc = QatPreserveConfig(sequences=6, seq_len=16, batch_size=3, top_k=8)
    pre = build_preserve(model, tok, pc, inst, seed=0)
    assert pre.ids.shape == (6, 16) and pre.top_idx.shape == (6, 15, 8)
    assert all(q.enabled for q in inst.quantizers)  # switched back on
    assert torch.equal(build_preserve(model, tok, pc, inst, seed=0).ids, pre.ids)  # seeded
    with torch.no_grad():
        with model.disable_adapter():
            inst.enable(False)
            base_kl = float(pre.loss(model)[1])  # the base against its own targets
            inst.enable(True)
        quant_kl = float(pre.loss(model)[1])  # adapter on, fake-quantized
    assert base_kl < 1e-6 and quant_kl > 1e-4
    text = tmp_path / "general.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    windows = build_preserve(model, tok, QatPreserveConfig(text=str(text), sequences=3, seq_len=16, top_k=8), inst)
    assert windows.ids.shape == (3, 16) and windows.source == str(text)
    from edgeft.errors import DataError

    with pytest.raises(DataError, match=r"missing.txt: file not found \(finetune.qat.preserve.text"):
        build_preserve(model, tok, QatPreserveConfig(text=str(tmp_path / "missing.txt")), inst)
    with pytest.raises(DataError, match="fewer than one window of finetune.qat.preserve.seq_len"):
        build_preserve(model, tok, QatPreserveConfig(text=str(text), seq_len=4096), inst)
    # its gradient reaches the adapter through the rounding, and following it brings the rounded model back
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        pre.loss(model)[0].backward()
        opt.step()
    with torch.no_grad():
        assert float(pre.loss(model)[1]) < 0.5 * quant_kl
    inst.remove()

    recs = sft_records(8)
    keep = {"sequences": 4, "seq_len": 16, "batch_size": 4}
    c = cfg(qat={"group_size": 32})
    plain = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "q", c, SYSTEM_PROMPT, work_dir=tmp_path / "w0")
    c = cfg(qat={"group_size": 32, "preserve": keep})
    out = finetune(tiny_lm_dir, recs, recs[:2], tmp_path / "p", c, SYSTEM_PROMPT, work_dir=tmp_path / "w")
    rec = out["qat"]["preserve"]
    assert rec["sequences"] == 4 and rec["text"] == "sampled from the base model" and rec["kl_last_steps"] > 0
    assert abs(out["train_loss"] - plain["train_loss"]) > 1e-6  # the distillation term is in the training loss
    with pytest.raises(ConfigError, match="preserve with objective dpo"):
        from edgeft.finetune.qat import check

        check(cfg(objective="dpo", qat={"preserve": {}}))
    with pytest.raises(UnsupportedError, match="preserve with finetune.processes=2"):
        check(cfg(processes=2, qat={"preserve": {}}))
