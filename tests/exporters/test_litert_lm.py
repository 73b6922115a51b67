"""LiteRT (.tflite) causal LM through litert-torch's generative converter, on the tiny random LLaMA
(litert and litert-lm extras needed): parity of chunked prefill + cached decode vs PyTorch, the runtime
behind ``load_lm(path, "tflite")``, int8, and the one-line refusals."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("ai_edge_litert", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                reason="needs the litert-lm extra (tensorflow): pip install 'edgeft[litert-lm]'")

from artifact_checks import check_artifact  # noqa: E402
from conftest import build_tiny_lm  # noqa: E402
from edgeft.errors import UnsupportedError  # noqa: E402

SMALL = {"kv_cache_max_len": 48, "prefill_seq_len": 16}  # small and quick (the tiny LLaMA has 256 positions)
IDS = [int(t) for t in (np.arange(45) * 7 + 11) % 90 + 5]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("litert-lm") / "model")


def _export(lm_dir, out, preset, **over):
    from edgeft.config.loader import load_preset
    from edgeft.exporters.litert import export_preset

    p = load_preset(preset)
    p = p.model_copy(update={"options": {**p.options, **SMALL, **over}})
    return export_preset(lm_dir, out, p, sample_ids=IDS[:24])


@pytest.fixture(scope="module")
def fp32(lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert-lm-fp32") / "art"
    return out, _export(lm_dir, out, "litert-fp32")


def _torch_logits(lm_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        return m(torch.as_tensor([ids])).logits[0].numpy()


def test_fp32_export_parity_and_bundle(fp32):
    out, rep = fp32
    assert rep["task"] == "causal-lm" and rep["quantize"] == "none" and rep["signatures"] == {
        "prefill": "prefill_16", "decode": "decode"}
    assert rep["parity"]["max_abs_diff"] <= 2e-3 and rep["parity"]["decode_steps"] >= 1
    assert all(c["passed"] for c in rep["parity"]["checks"])
    meta = json.loads((out / "litert.json").read_text())
    assert (meta["task"], meta["prefill_seq_len"], meta["kv_cache_max_len"]) == ("causal-lm", 16, 48)
    assert (out / "model.tflite").is_file() and (out / "config.json").is_file() and (out / "export_report.json").is_file()


def test_runtime_chunks_the_prompt_and_falls_back_to_decode_at_the_cache_end(lm_dir, fp32):
    from edgeft.runtime.base import load_lm

    out, _ = fp32
    ref = _torch_logits(lm_dir, IDS)
    lm = load_lm(out, "tflite", threads=1)
    got = lm.logits(np.asarray(IDS[:37]))  # chunks of 16 + 16 + a right-padded 5
    assert got.shape == ref[:37].shape and np.abs(got - ref[:37]).max() < 2e-3
    lm._run(IDS[:40], 0)
    tail = lm._run(IDS[40:45], 40)  # 40 + 16 > 48: a padded chunk would run past the cache, so one token at a time
    assert np.abs(tail - ref[40:45]).max() < 2e-3


def test_generate_matches_pytorch_greedy(lm_dir, fp32):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.runtime.base import load_lm

    out, _ = fp32
    lm = load_lm(out, "tflite", threads=1)
    prompt = IDS[:20]
    m = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = m.generate(torch.as_tensor([prompt]), max_new_tokens=6, do_sample=False)[0, 20:].tolist()
    assert lm.generate([prompt], 6, [])[0] == ref
    ttft, steps = lm.timed_generate(prompt, 4)
    assert ttft > 0 and len(steps) in (3, 4)
    with pytest.raises(Exception, match="do not fit the exported KV cache of 48"):
        lm.generate([IDS[:45]], 8, [])


def test_int8_dynamic_is_scored_on_held_out_windows(lm_dir, tmp_path):
    from edgeft.config.loader import load_preset
    from edgeft.exporters import describe_export

    rep = _export(lm_dir, tmp_path / "int8", "litert-lm-int8")
    assert rep["quantize"] == "dynamic_int8" and rep["quality"]["passed"]
    assert rep["quality"]["top1_agreement"] >= 0.8 and abs(rep["quality"]["ppl_increase_pct"]) < 10
    assert json.loads((tmp_path / "int8" / "litert.json").read_text())["precision"] == "int8"
    describe_export(tmp_path / "int8", load_preset("litert-lm-int8"), "causal-lm")
    check_artifact(tmp_path / "int8", format="tflite", runtime="tflite", precision="int8", int8_mode="dynamic",
                   main_file="model.tflite", size_bytes=rep["size_bytes"])


def test_options_map_to_the_converter_and_artifact_precision():
    from edgeft.exporters.litert import LiteRTOptions
    from edgeft.exporters.litert_lm import converter_quantization

    assert converter_quantization(LiteRTOptions(quantize="dynamic")) == "dynamic_int8"
    o4 = LiteRTOptions(quantize="dynamic", weight_bits=4, block_size=128)
    assert converter_quantization(o4) == "dynamic_int4_block128" and o4.precision == "int4"
    with pytest.raises(UnsupportedError, match="full-integer int8 is not offered .* for a causal LM"):
        converter_quantization(LiteRTOptions(quantize="full"))


def test_refusals_are_one_line(lm_dir, tmp_path, monkeypatch):
    with pytest.raises(UnsupportedError, match="kv_cache_max_len 512 exceeds .* max_position_embeddings 256"):
        _export(lm_dir, tmp_path / "big", "litert-fp32", kv_cache_max_len=512)  # > 256
    assert not (tmp_path / "big").exists() and not list(tmp_path.glob(".big*"))  # nothing half-written
    import edgeft.exporters.litert_lm as mod

    monkeypatch.setattr(mod, "_has_tensorflow", lambda: False)
    with pytest.raises(UnsupportedError, match=r"imports tensorflow \(not installed\): pip install "
                                               r"'edgeft\[litert,litert-lm\]'"):
        _export(lm_dir, tmp_path / "x", "litert-fp32")


def test_generate_command_detects_a_tflite_folder(lm_dir, fp32):
    from edgeft.chat import generate

    out, _ = fp32
    assert generate(out, "set a timer", max_new_tokens=6) == generate(lm_dir, "set a timer", max_new_tokens=6)
