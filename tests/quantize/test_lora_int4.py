"""``int4-lora``: base codes on the base's own 4-bit grid, the LoRA adapter as a side path.

The tiny LLaMA's Linear weights are first snapped onto an asymmetric 4-bit grid (blocks of 32 along
the input, float step and offset: GGUF Q4_1's form, as the embedded SmolLM2 ships), then a LoRA
adapter with random A and B is merged into it. The scheme must recover the grid exactly and rebuild
the merged model: with an fp32 side path and fp32 activations the logits match the merged export's
to float rounding; with the default int8 side path they stay close, while int4-rtn on the same
merged weights does measurably worse. Measured here (`pytest -s`, 2026-12-04): fp32 side path max
|logit diff| 4.8e-7; KL vs the merged export over 128 held-out positions, int8 side path 4.4e-7,
int4-rtn (asymmetric, b32) 8.1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeft.errors import ConfigError, UnsupportedError
from quantize_support import kl, logits_of
from quantize_support import adapted, heldout  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean",
    "ignore:Exporting aten..index operator", "ignore:The given NumPy array is not writable",
)


def test_fp32_side_path_rebuilds_the_merged_model(adapted, heldout, tmp_path):
    from edgeft.quantize import quantize

    _, adapter, _, onnx_dir = adapted
    rep = quantize(onnx_dir, tmp_path / "q", "int4-lora", {"side_path": "fp32", "accuracy_level": 0,
                                                           "lm_head": "keep", "embeddings": "keep"},
                   adapter_dir=adapter)
    opts = rep["options"]
    assert opts["on_grid_fraction"] == 1.0  # every base block recovered on its 4-bit grid
    assert opts["adapted_matmuls"] == 14  # 7 Linears x 2 layers
    assert opts["weight_error_p99_steps_max"] < 1e-3
    assert opts["quantized_matmuls"] == 14 and opts["adapter_delta_median_steps"] > 0.01
    diff = np.abs(logits_of(onnx_dir, heldout) - logits_of(tmp_path / "q", heldout)).max()
    assert diff < 1e-3, diff


def test_int8_side_path_keeps_the_fine_tune_where_rtn_does_not(adapted, heldout, tmp_path):
    from edgeft.quantize import quantize

    _, adapter, _, onnx_dir = adapted
    ref = logits_of(onnx_dir, heldout)
    quantize(onnx_dir, tmp_path / "lora", "int4-lora", {"lm_head": "keep", "embeddings": "keep"},
             adapter_dir=adapter)
    quantize(onnx_dir, tmp_path / "rtn", "int4-rtn", {"block_size": 32, "symmetric": False})
    kl_lora = kl(ref, logits_of(tmp_path / "lora", heldout))
    kl_rtn = kl(ref, logits_of(tmp_path / "rtn", heldout))
    assert kl_lora < 1e-4 and kl_lora < kl_rtn / 10, (kl_lora, kl_rtn)


def test_base_off_the_grid_still_keeps_the_adapter_exact(tiny_lm_dir, tmp_path):
    """A base not on any 4-bit grid: blocks get min/max RTN; the report says how many were on a grid."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgeft.exporters.onnx import export_onnx
    from edgeft.quantize import quantize

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    export_onnx(tmp_path / "merged", tmp_path / "onnx", opset=18)
    with torch.no_grad():
        rep = quantize(tmp_path / "onnx", tmp_path / "q", "int4-lora", adapter_dir=tmp_path / "adapter")
    opts = rep["options"]
    assert opts["on_grid_fraction"] < 0.01 and opts["adapted_matmuls"] == 4


def test_refusals_name_the_cause(adapted, tmp_path):
    from edgeft.quantize import quantize

    _, adapter, _, onnx_dir = adapted
    with pytest.raises(ConfigError, match="--adapter"):
        quantize(onnx_dir, tmp_path / "a", "int4-lora")
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(UnsupportedError, match="DoRA"):
        quantize(onnx_dir, tmp_path / "b", "int4-lora", adapter_dir=dora)
    not_lora = tmp_path / "ia3"
    not_lora.mkdir()
    (not_lora / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(UnsupportedError, match="only LoRA"):
        quantize(onnx_dir, tmp_path / "c", "int4-lora", adapter_dir=not_lora)


def test_recipe_with_a_whole_model_method_is_refused_at_load(tiny_recipe):
    import yaml

    from edgeft.recipe import load_recipe

    data = yaml.safe_load(tiny_recipe.read_text())
    data["finetune"]["method"] = "full"
    data["quantize"] = [{"name": "int4", "scheme": "int4-lora"}]
    tiny_recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"quantize\.0\.scheme: scheme int4-lora keeps the LoRA adapter"):
        load_recipe(tiny_recipe)
