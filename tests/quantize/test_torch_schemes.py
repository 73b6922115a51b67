"""PyTorch-input quantization schemes on the tiny LLaMA: torch-dynamic-int8 (TorchScript), bnb-nf4, bnb-int8,
and gptqmodel's refusal without its package or CUDA.

Measured on this model (256 held-out tokens, random weights so perplexity ~ vocab size): size 0.46x
(nf4), 0.50x (int8); the TorchScript int8 model's tensors are 0.59x (it also stores its KV cache and
the fp32 embedding, plus ~0.3 MB of code whatever the model size); perplexity within 0.3% of the input; top-1 agreement 0.988 (nf4) to 1.0 (int8).
"""

from __future__ import annotations

import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact
from edgeft.errors import UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_BNB: dict = {}


def _require_bnb_cpu(model_dir: Path) -> None:
    """Skip unless bitsandbytes quantizes the tiny model to 4 bits and runs a forward pass here (checked once)."""
    if "why" not in _BNB:
        try:
            import torch
            from transformers import AutoModelForCausalLM, BitsAndBytesConfig

            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=q, device_map="cpu")
            with torch.no_grad():
                model(input_ids=torch.tensor([[5, 6, 7]]))
            _BNB["why"] = None
        except Exception as e:  # noqa: BLE001 - any failure means: not usable here
            _BNB["why"] = f"bitsandbytes 4-bit does not run on this machine: {type(e).__name__}: {e}"
    if _BNB["why"]:
        pytest.skip(_BNB["why"])


@pytest.fixture(scope="module")
def heldout(tiny_lm_dir):
    from transformers import AutoTokenizer

    from conftest import SYSTEM_PROMPT
    from edgeft.data.intents import generate
    from edgeft.data.templates import conversation_text
    from edgeft.metrics.lm import windows

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    text = "".join(conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]) for r in generate(40, 8, seed=3)[0])
    return windows(tok(text, add_special_tokens=False).input_ids, 64, 64, 256)


def _check_report(rep: dict, max_ratio: float | None, max_ppl_pct: float, min_agree: float) -> None:
    assert rep["input_format"] == "pytorch"
    assert rep["size_bytes"] > 0
    if max_ratio is not None:
        assert rep["size_bytes"] < rep["input_size_bytes"] * max_ratio
    assert abs(rep["perplexity_increase_pct"]) < max_ppl_pct
    assert rep["top1_agreement"] >= min_agree
    assert rep["quality_tokens"] == 256


def test_torch_dynamic_int8_to_torchscript(tiny_lm_dir, heldout, tmp_path):
    import torch

    from edgeft.quantize import SCHEMES, quantize
    from edgeft.runtime.lm import load_lm
    from edgeft.runtime.torchscript import TorchScriptLM

    s = SCHEMES.get("torch-dynamic-int8")
    assert (s.input_format, s.output_format, s.precision, s.int8_mode) == ("pytorch", "torchscript", "int8", "dynamic")
    out = tmp_path / "int8"
    rep = quantize(tiny_lm_dir, out, "torch-dynamic-int8", {"max_cache_len": 64}, quality_ids=heldout)
    _check_report(rep, None, 1.0, 0.99)
    # A TorchScript archive carries ~0.3 MB of code and debug tables whatever the model size, as much as this
    # tiny model's weights; its tensor payload (int8 linears, fp32 embedding/head, 64-slot KV cache) is smaller.
    with zipfile.ZipFile(out / "model.pt") as z:
        payload = sum(i.file_size for i in z.infolist() if "/data/" in i.filename)
    assert payload < 0.65 * rep["input_size_bytes"]
    assert rep["output_format"] == "torchscript"
    assert rep["options"]["quantized_linear"] == 14  # 7 projections x 2 layers; lm_head kept fp32
    assert rep["options"]["trace_parity_max_abs_diff"] < 1e-4  # trace vs the eager quantized model
    assert (out / "model.pt").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.safetensors"))
    check_artifact(out, name="torch-dynamic-int8", kind="causal-lm", format="torchscript", runtime="torchscript",
                   precision="int8", int8_mode="dynamic", stage="quantize", size_bytes=rep["size_bytes"])
    scripted = torch.jit.load(str(out / "model.pt"))
    codes = [m.code for m in scripted.modules() if m._c._has_method("forward")]
    assert sum("quantized.linear_dynamic" in c for c in codes) == 14  # the int8 kernels are in the saved trace
    lm = load_lm(out, "torchscript")
    assert isinstance(lm, TorchScriptLM) and len(lm.generate([[5, 6, 7]], 5, eos_ids=[])[0]) == 5


def test_torch_dynamic_int8_keeps_everything_when_asked(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.quantize import quantize

    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    with pytest.raises(ConfigError, match="no nn.Linear left"):
        quantize(tiny_lm_dir, tmp_path / "x", "torch-dynamic-int8", {"keep_fp32": names})


@pytest.mark.parametrize("scheme,cls_name,max_ratio,min_agree,max_diff", [
    ("bnb-nf4", "Linear4bit", 0.55, 0.97, 0.2), ("bnb-int8", "Linear8bitLt", 0.6, 0.99, 0.05)])
def test_bnb_checkpoint_loads_with_from_pretrained(scheme, cls_name, max_ratio, min_agree, max_diff, tiny_lm_dir,
                                                   heldout, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.quantize import SCHEMES, quantize

    _require_bnb_cpu(tiny_lm_dir)
    assert SCHEMES.get(scheme).output_format == "pytorch"
    out = tmp_path / scheme
    rep = quantize(tiny_lm_dir, out, scheme, {}, quality_ids=heldout)
    _check_report(rep, max_ratio, 1.0, min_agree)
    assert rep["options"]["quantized_linear"] == 14 and rep["options"]["keep_fp32"] == ["lm_head"]
    cfg = (out / "config.json").read_text()
    assert "quantization_config" in cfg and "bitsandbytes" in cfg
    check_artifact(out, name=scheme, kind="causal-lm", format="pytorch", runtime="pytorch",
                   precision=SCHEMES.get(scheme).precision, int8_mode=SCHEMES.get(scheme).int8_mode,
                   size_bytes=rep["size_bytes"])
    model = AutoModelForCausalLM.from_pretrained(str(out))  # no arguments: the checkpoint says how to load it
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == cls_name
    assert type(model.lm_head) is torch.nn.Linear  # kept in fp32
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32)
    ids = torch.tensor([list(range(20, 52))])
    with torch.no_grad():
        diff = (model(input_ids=ids).logits.float() - ref(input_ids=ids).logits).abs().max().item()
    assert 0 < diff < max_diff  # quantized (not a copy of the fp32 weights), and close (nf4: 0.083 measured)


def test_bnb_nf4_options(tiny_lm_dir, tmp_path):
    import json

    from edgeft.errors import ConfigError
    from edgeft.quantize import quantize

    _require_bnb_cpu(tiny_lm_dir)
    rep = quantize(tiny_lm_dir, tmp_path / "fp4", "bnb-nf4", {"quant_type": "fp4", "double_quant": False})
    q = json.loads((tmp_path / "fp4" / "config.json").read_text())["quantization_config"]
    assert q["bnb_4bit_quant_type"] == "fp4" and q["bnb_4bit_use_double_quant"] is False
    assert rep["options"]["quant_type"] == "fp4"
    with pytest.raises(ConfigError, match="compute_dtype"):
        quantize(tiny_lm_dir, tmp_path / "bad", "bnb-nf4", {"compute_dtype": "float64"})


def _gptq_refusal(tiny_lm_dir, tmp_path) -> str:
    from edgeft.quantize import quantize

    with pytest.raises(UnsupportedError) as e:
        quantize(tiny_lm_dir, tmp_path / "gptq", "gptqmodel", {}, calibration_ids=[list(range(10, 42))])
    return str(e.value)


def test_gptqmodel_refuses_without_package_or_cuda(tiny_lm_dir, tmp_path, monkeypatch):
    import torch

    from edgeft.quantize import SCHEMES

    s = SCHEMES.get("gptqmodel")
    assert s.input_format == "pytorch" and s.needs_calibration and s.precision == "int4"
    monkeypatch.setitem(sys.modules, "gptqmodel", None)  # import fails, as when the extra is not installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = _gptq_refusal(tiny_lm_dir, tmp_path)
    assert "gptqmodel package" in msg and "pip install 'edgeft[gptq]'" in msg and "CUDA" in msg
    for alt in ("int4-gptq", "int4-rtn", "int4-hqq"):
        assert alt in msg
    # package present, still no GPU: only CUDA is named as missing
    monkeypatch.setitem(sys.modules, "gptqmodel", types.ModuleType("gptqmodel"))
    msg = _gptq_refusal(tiny_lm_dir, tmp_path)
    assert "CUDA" in msg and "gptqmodel package" not in msg and "int4-rtn" in msg


def test_pytorch_scheme_refuses_onnx_folder_and_classifier_check(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.quantize import quantize

    (tmp_path / "onnx").mkdir()
    with pytest.raises(ConfigError, match="HF model folder"):
        quantize(tmp_path / "onnx", tmp_path / "o", "torch-dynamic-int8", {})
    with pytest.raises(UnsupportedError, match="ONNX scheme"):
        quantize(tiny_lm_dir, tmp_path / "o", "torch-dynamic-int8", {}, labeled=[{"text": "x", "label": "a"}])


def test_heldout_windows_are_real(heldout):
    assert len(heldout) == 4 and all(len(w) == 64 for w in heldout)
    assert len({int(t) for w in heldout for t in np.asarray(w)}) > 20


def test_pipeline_torchscript_export_and_pytorch_schemes(tiny_lm_dir, tmp_path):
    """A recipe with the torchscript preset and PyTorch-input schemes: quantize reads the merge stage's
    folder, validate loads each artifact with its own runtime and checks it against each device's formats."""
    import json

    from conftest import tiny_recipe_dict, write_recipe
    from edgeft.recipe import load_recipe
    from edgeft.pipeline.run import Pipeline

    d = tiny_recipe_dict(tiny_lm_dir, "ts-tiny")
    d["export"] = {"preset": "torchscript", "tolerance": 2e-3}
    d["quantize"] = [{"name": "tdyn", "scheme": "torch-dynamic-int8", "options": {"max_cache_len": 128}}]
    d["validate"].update({"devices": ["host", "pi5", "phone-cpu"], "require": ["host"], "include_base": False,
                          "latency": {"new_tokens": 4, "warmup": 0, "repeats": 1}})
    path = write_recipe(tmp_path / "ts.yaml", d)
    p = Pipeline(load_recipe(path), path, tmp_path / "runs")
    p.execute()
    q = json.loads((p.run.stage_dir("quantize") / "tdyn" / "quantize_report.json").read_text())
    merged = p.run.stage_dir("merge") / "model.safetensors"
    assert q["input_format"] == "pytorch" and q["input_size_bytes"] == merged.stat().st_size  # the merge folder
    rep = json.loads((p.run.stage_dir("validate") / "report.json").read_text())
    arts = rep["artifacts"]
    assert [arts[n]["format"] for n in ("merged", "torchscript-fp32", "tdyn")] == ["pytorch", "torchscript", "torchscript"]
    assert arts["tdyn"]["size_bytes"] == q["size_bytes"] > 0
    assert arts["torchscript-fp32"]["accuracy"]["top1_agreement"] == 1.0
    assert abs(arts["torchscript-fp32"]["accuracy"]["perplexity"] - arts["merged"]["accuracy"]["perplexity"]) < 1e-3
    assert arts["tdyn"]["latency"]["decode_steps"] == 3
    dev = rep["devices"]
    assert dev["pi5"]["results"]["tdyn"]["compatible"] and not dev["pi5"]["results"]["merged"]["compatible"]
    assert any("format torchscript is not supported on phone-cpu" in r
               for r in dev["phone-cpu"]["results"]["tdyn"]["reasons"])
