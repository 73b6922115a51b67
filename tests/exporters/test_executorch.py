"""ExecuTorch (.pte, XNNPACK) export of a tiny LLaMA and a tiny BERT classifier: every preset exports
and passes its own check, the runtime reproduces PyTorch (logits, greedy tokens), bad input fails in
one line, and a pipeline run validates the pte artifact on phone-cpu.

Lowering through ``to_edge_transform_and_lower`` costs about a minute per program even for these
tiny models (Python graph passes, 2 cores), so each program is exported once per module."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.skipif(importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torchao") is None,
                       reason="executorch/torchao not installed (pip install 'edgeft[executorch]')"),
]

PRESETS = ["executorch-fp32", "executorch-8da4w", "executorch-int8w"]
SAMPLE = list(range(5, 29))


@pytest.fixture(scope="module")
def lm_exports(tiny_lm_dir, tmp_path_factory):
    """preset -> (folder, report), exported on first use."""
    from edgeft.exporters import export

    root = tmp_path_factory.mktemp("pte")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(preset: str) -> tuple[Path, dict]:
        if preset not in cache:
            out = root / preset
            cache[preset] = (out, export(tiny_lm_dir, out, preset=preset, sample_ids=SAMPLE))
        return cache[preset]

    return get


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_exports_with_report_and_parity(lm_exports, preset):
    from edgeft.config.loader import load_preset

    out, rep = lm_exports(preset)
    opts = load_preset(preset).options
    assert {p.name for p in out.iterdir()} >= {"config.json", "executorch.json", "export_report.json", "model.pte",
                                                "tokenizer.json", "tokenizer_config.json"}
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())
    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["format"] == "pte" and rep["kind"] == "causal-lm" and rep["max_cache_len"] == opts["max_cache_len"]
    assert rep["size_bytes"] == (out / "model.pte").stat().st_size > 0
    assert rep["export_seconds"] > 0 and rep["executorch"]["xnnpack_partitions"] > 0
    parity = rep["parity"]
    assert parity["decode_steps"] == 4 and parity["tokens"] == len(SAMPLE)
    if preset == "executorch-fp32":
        assert rep["quantization"] == "none" and rep["max_abs_diff"] <= 2e-3
        assert all(c["passed"] for c in parity["checks"])
    else:
        assert rep["top1_agreement"] >= opts["min_top1_agreement"]
        assert rep["quality"]["top1_agreement"] >= opts["min_top1_agreement"]
        assert rep["max_abs_diff"] > 1e-5  # really quantized
    if preset == "executorch-8da4w":
        assert rep["group_size"] == 32 and "PerGroup(32)" in rep["executorch"]["quantized"]["linear"]
    if preset == "executorch-int8w":
        assert "int8, PerAxis(0)" in rep["executorch"]["quantized"]["linear"]
        assert "int8" in rep["executorch"]["quantized"]["embedding"]


def test_8da4w_with_an_int8_lm_head(tiny_lm_dir, tmp_path):
    from edgeft.exporters.executorch import export_executorch

    rep = export_executorch(tiny_lm_dir, tmp_path / "o", quantization="8da4w", lm_head="int8", max_cache_len=64,
                            sample_ids=SAMPLE)
    assert "int8, PerAxis(0)" in rep["executorch"]["quantized"]["lm_head"]
    assert rep["quality"]["top1_agreement"] >= 0.8


def test_quantized_programs_are_smaller(lm_exports):
    sizes = {p: lm_exports(p)[1]["size_bytes"] for p in PRESETS}
    assert sizes["executorch-8da4w"] < sizes["executorch-int8w"] < sizes["executorch-fp32"]


def test_fp32_runtime_matches_pytorch_logits_and_greedy_tokens(lm_exports, tiny_lm_dir):
    from edgeft.runtime.lm import TorchLM, load_lm

    out, _ = lm_exports("executorch-fp32")
    lm = load_lm(out, "pte", threads=2)
    ref = TorchLM(tiny_lm_dir)
    ids = np.asarray(SAMPLE, np.int64)
    assert np.max(np.abs(lm.logits(ids) - ref.logits(ids))) < 1e-3
    prompts = [SAMPLE[:7], SAMPLE[3:15]]
    eos = [0]
    assert lm.generate(prompts, 12, eos) == ref.generate(prompts, 12, eos)
    ttft, steps = lm.timed_generate(SAMPLE[:6], 5)
    assert ttft > 0 and len(steps) == 4
    assert lm.threads == 2 and lm.threads_source == "set"


def test_generate_command_detects_a_pte_folder(lm_exports, tiny_lm_dir):
    from edgeft.chat import generate

    out, _ = lm_exports("executorch-fp32")
    assert generate(out, "set a timer", max_new_tokens=6) == generate(tiny_lm_dir, "set a timer", max_new_tokens=6)


def test_prompt_longer_than_cache_is_refused(lm_exports):
    from edgeft.errors import ModelSourceError
    from edgeft.runtime.executorch import ExecuTorchLM

    out, rep = lm_exports("executorch-fp32")
    with pytest.raises(ModelSourceError, match="max_cache_len"):
        ExecuTorchLM(out).logits(np.arange(rep["max_cache_len"] + 1) % 50)


def test_not_an_hf_folder_fails_in_one_line(tmp_path):
    from edgeft.errors import ModelSourceError
    from edgeft.exporters import export

    (tmp_path / "src").mkdir()
    with pytest.raises(ModelSourceError) as e:
        export(tmp_path / "src", tmp_path / "out", preset="executorch-8da4w")
    assert "no config.json" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_option_and_quantization_are_config_errors(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.exporters.executorch import export_executorch

    with pytest.raises(ConfigError, match="qtype: unknown option"):
        export_executorch(tiny_lm_dir, tmp_path / "o", qtype="Q4_0")
    with pytest.raises(ConfigError, match="quantization: 'int3' is not a valid choice.*8da4w"):
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="int3")


def test_weight_only_int8_linears_are_refused_with_the_reason(tiny_lm_dir, tmp_path):
    from edgeft.errors import UnsupportedError
    from edgeft.exporters.executorch import export_executorch

    with pytest.raises(UnsupportedError, match="wrong.*8da8w"):
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="int8w")


def test_missing_runtime_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from edgeft.errors import UnsupportedError
    from edgeft.exporters import executorch as ex

    real = builtins.__import__

    def no_executorch(name, *a, **k):
        if name.startswith("executorch"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(UnsupportedError, match=r"pip install 'edgeft\[executorch\]'"):
        ex._exir()


# --------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    spec = importlib.util.spec_from_file_location(
        "_edgeft_tests_finetune_conftest", Path(__file__).resolve().parents[1] / "finetune" / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    src = helpers.build_tiny_cls_bert(tmp_path_factory.mktemp("bert") / "model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=2).eval()
    model.save_pretrained(src, safe_serialization=True)
    return src


def test_classifier_pte_logits_match_pytorch(cls_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.config.schema import StaticShapes
    from edgeft.exporters import export
    from edgeft.exporters.onnx_encoder import module_logits
    from edgeft.runtime.bench import run_encoder_inline
    from edgeft.runtime.executorch import ExecuTorchClassifier
    from edgeft.validate import Artifact, _classifier_logits, _fixed_shape

    texts = ["a fine film", "dull and far too long for what it says", "ok"]
    rep = export(cls_dir, tmp_path / "cls", preset="executorch-fp32", sample_texts=texts,
                 static_shapes=StaticShapes(batch=1, seq=32))
    assert rep["kind"] == "classifier" and rep["seq_len"] == 32 and rep["max_abs_diff"] <= 2e-3
    tok = AutoTokenizer.from_pretrained(str(cls_dir))
    ref = module_logits(AutoModelForSequenceClassification.from_pretrained(str(cls_dir), dtype=torch.float32).eval(),
                        tok, texts + ["something new"], max_length=32)
    got = ExecuTorchClassifier(tmp_path / "cls", threads=2).logits(tok, texts + ["something new"])
    assert got.shape == ref.shape == (4, 2) and np.max(np.abs(got - ref)) < 1e-4
    art = Artifact("cls-pte", tmp_path / "cls", "pte")
    assert _fixed_shape(art) == (1, 32)
    assert np.allclose(_classifier_logits(art, art, tok, texts, 32, 2), got[:3], atol=1e-6)
    lat = run_encoder_inline(str(tmp_path / "cls"), 2, 1, 32, 0, 2, fmt="pte")
    assert lat["per_inference_ms_p50"] > 0 and lat["seq_len"] == 32


# --------------------------------------------------------------------------- pipeline


def test_pipeline_validates_the_pte_artifact_on_phone_cpu(tiny_lm_dir, tmp_path):
    import edgeft
    from conftest import tiny_recipe_dict, write_recipe

    data = tiny_recipe_dict(tiny_lm_dir, name="tiny-pte")
    data["export"]["extra"] = ["executorch-8da4w"]
    data["quantize"] = []
    data["validate"]["devices"] = ["host", "phone-cpu"]
    data["validate"]["include_base"] = False
    res = edgeft.run(write_recipe(tmp_path / "tiny-pte.yaml", data), runs_root=tmp_path / "runs")
    rep = res.report
    a = rep["artifacts"]["executorch-8da4w"]
    assert a["format"] == "pte" and a["precision"] == "int4" and a["int8_mode"] == "dynamic"
    assert a["size_bytes"] == (res.run_dir / "export" / "executorch-8da4w" / "model.pte").stat().st_size
    assert 0.0 <= a["accuracy"]["exact_match"] <= 1.0 and a["accuracy"]["perplexity"] > 1.0
    assert a["latency"]["decode_tok_s"] > 0 and a["latency"]["label"] == "measured-host"
    phone = rep["devices"]["phone-cpu"]["results"]["executorch-8da4w"]
    assert phone["compatible"], phone["reasons"]
    assert phone["passed"] is True, phone["gates"]
    host = rep["devices"]["host"]["results"]["executorch-8da4w"]
    assert host["compatible"], host["reasons"]  # the host profile runs pte as well (devices/host.yaml formats)
