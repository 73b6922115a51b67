"""``int4-basegrid``: int4 codes on the base model's own 4-bit grid, chosen by GPTQ on calibration text.

Same tiny fixture as int4-lora (``conftest.adapted``): a base on GGUF Q4_1's grid plus a merged LoRA delta of
about a tenth of a step. Rounding the merged weights onto the base grid lands back on the base (the fine-tune
is erased); GPTQ on the same grid, calibrated on text like the task's, keeps much more of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.errors import ConfigError, UnsupportedError
from quantize_support import SYSTEM, kl, logits_of
from quantize_support import adapted, heldout  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean",
    "ignore:Exporting aten..index operator", "ignore:The given NumPy array is not writable",
)


@pytest.fixture(scope="module")
def calibration(tiny_lm_dir):
    """Token windows of intent conversations (the training split's kind of text), disjoint from ``heldout``."""
    from transformers import AutoTokenizer

    from edgeft.data.intents import generate
    from edgeft.data.templates import conversation_text

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    text = "".join(conversation_text(tok, SYSTEM, r["prompt"], r["response"])
                   for r in generate(64, 8, seed=5)[0])
    ids = tok(text, add_special_tokens=False).input_ids
    return [ids[i:i + 64] for i in range(0, min(len(ids), 16 * 64) - 63, 64)]


def _ops(onnx_dir) -> dict:
    import onnx

    counts: dict = {}
    for n in onnx.load(str(onnx_dir / "model.onnx")).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


KEEP_HEAD = {"lm_head": "keep", "embeddings": "keep"}


def test_gptq_on_the_base_grid_keeps_the_fine_tune_that_rounding_erases(adapted, heldout, calibration, tmp_path):
    from edgeft.quantize import quantize

    base_dir, adapter, _, onnx_dir = adapted
    from edgeft.exporters.onnx import export_onnx

    export_onnx(base_dir, tmp_path / "base-onnx", opset=18)
    ref, base = logits_of(onnx_dir, heldout), logits_of(tmp_path / "base-onnx", heldout)
    rep = quantize(onnx_dir, tmp_path / "bg", "int4-basegrid", {"offsets": "exact", "accuracy_level": 0, **KEEP_HEAD},
                   calibration_ids=calibration, adapter_dir=adapter)
    opts = rep["options"]
    assert opts["on_grid_fraction"] == 1.0 and opts["quantized_matmuls"] == 14
    assert all(s["lora"] for s in opts["layers"].values())
    # per layer, GPTQ's output error on the calibration text is below what rounding onto the same grid leaves
    assert opts["output_error_vs_rounding"]["max"] < 1.0, opts["output_error_vs_rounding"]
    kl_base = kl(ref, base)  # what rounding the fine-tune away costs: the base model itself
    kl_bg = kl(ref, logits_of(tmp_path / "bg", heldout))
    assert kl_bg < kl_base / 2, (kl_bg, kl_base)


def test_int4_offsets_are_rows_of_the_same_matmul(adapted, heldout, calibration, tmp_path):
    from edgeft.quantize import quantize

    _, adapter, _, onnx_dir = adapted
    quantize(onnx_dir, tmp_path / "exact", "int4-basegrid", {"offsets": "exact", **KEEP_HEAD},
             calibration_ids=calibration, adapter_dir=adapter)
    rep = quantize(onnx_dir, tmp_path / "int4", "int4-basegrid", KEEP_HEAD, calibration_ids=calibration,
                   adapter_dir=adapter)
    ops, before = _ops(tmp_path / "int4"), _ops(onnx_dir)
    # one block-mean pool and one Concat per distinct MatMul input: q/k/v share one, gate/up another
    assert ops["AveragePool"] == ops["Concat"] - before["Concat"] == 8 and ops["MatMulNBits"] == 14
    assert ops.get("Add", 0) == before.get("Add", 0)
    steps = [s["offset_error_steps_max"] for s in rep["options"]["layers"].values()]
    assert 0 < max(steps) < 1.0, steps  # int4 offsets are off by less than a step, and GPTQ sees them
    ref = logits_of(onnx_dir, heldout)
    kl_exact, kl_int4 = kl(ref, logits_of(tmp_path / "exact", heldout)), kl(ref, logits_of(tmp_path / "int4", heldout))
    assert kl_int4 < 3 * kl_exact + 1e-5, (kl_int4, kl_exact)


def test_zero_point_offsets_use_the_fast_graph_without_extra_ops(adapted, calibration, tmp_path):
    from edgeft.quantize import quantize

    _, adapter, _, onnx_dir = adapted
    quantize(onnx_dir, tmp_path / "zp", "int4-basegrid", {"offsets": "zero-point", **KEEP_HEAD},
             calibration_ids=calibration, adapter_dir=adapter)
    ops, before = _ops(tmp_path / "zp"), _ops(onnx_dir)
    assert ops["MatMulNBits"] == 14 and "AveragePool" not in ops and ops["Concat"] == before["Concat"]


def test_without_an_adapter_the_grid_is_fitted_to_the_weights(adapted, calibration, tmp_path):
    from edgeft.quantize import quantize

    base_dir, _, _, _ = adapted
    from edgeft.exporters.onnx import export_onnx

    export_onnx(base_dir, tmp_path / "onnx", opset=18)
    rep = quantize(tmp_path / "onnx", tmp_path / "q", "int4-basegrid", KEEP_HEAD, calibration_ids=calibration)
    opts = rep["options"]
    assert opts["adapter"] is None and opts["on_grid_fraction"] == 1.0  # the base alone is on its grid
    assert not any(s["lora"] for s in opts["layers"].values())


def test_needs_calibration_and_a_matching_adapter(adapted, tiny_lm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgeft.quantize import quantize

    _, _, _, onnx_dir = adapted
    with pytest.raises(ConfigError, match="calibration"):
        quantize(onnx_dir, tmp_path / "a", "int4-basegrid")
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    other.save_pretrained(tmp_path / "partial")
    from edgeft.quantize.schemes.lora_int4 import adapter_parts, load_lora

    lora = load_lora(tmp_path / "partial")
    # a builder graph packs q/k/v: an adapter on q alone cannot be separated from the packed MatMul
    with pytest.raises(UnsupportedError, match="only some of"):
        adapter_parts(lora, "/model/layers.0/attn/qkv_proj/MatMul", (64, 128))


def test_adapter_parts_of_builder_and_optimum_names(adapted):
    from edgeft.quantize.schemes.lora_int4 import adapter_parts, load_lora

    _, adapter, _, _ = adapted
    lora = load_lora(adapter)
    q = lora.modules["model.layers.1.self_attn.q_proj"]
    k = lora.modules["model.layers.1.self_attn.k_proj"]
    v = lora.modules["model.layers.1.self_attn.v_proj"]
    n = q[1].shape[0] + k[1].shape[0] + v[1].shape[0]
    parts = adapter_parts(lora, "/model/layers.1/attn/qkv_proj/MatMul", (q[0].shape[1], n))
    assert [(lo, hi) for lo, hi, _, _ in parts] == [(0, q[1].shape[0]), (q[1].shape[0], n - v[1].shape[0]),
                                                    (n - v[1].shape[0], n)]
    assert np.array_equal(parts[2][3], v[1])
    down = lora.modules["model.layers.0.mlp.down_proj"]
    shape = (down[0].shape[1], down[1].shape[0])
    assert adapter_parts(lora, "/model/layers.0/mlp/down_proj/MatMul", shape)[0][2] is down[0]
    assert adapter_parts(lora, "/model/layers.0/mlp/down_proj/MatMul_1", shape)  # optimum's name form
    with pytest.raises(ConfigError, match="outputs together"):
        adapter_parts(lora, "/model/layers.1/attn/qkv_proj/MatMul", (q[0].shape[1], n + 1))
