"""onnxruntime-genai export of a tiny LLaMA: files, quality report and gates, GenaiLM vs OrtLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact

WINDOWS = [list(range(3, 67)), list(range(100, 164))]


@pytest.fixture(scope="module")
def genai_fp32(tiny_lm_dir, tmp_path_factory) -> tuple[Path, dict]:
    from edgeft.exporters.genai import export_genai

    out = tmp_path_factory.mktemp("genai") / "fp32"
    return out, export_genai(tiny_lm_dir, out, precision="fp32", quality_ids=WINDOWS)


@pytest.fixture(scope="module")
def genai_int4(tiny_lm_dir, tmp_path_factory) -> tuple[Path, dict]:
    from edgeft.exporters.genai import export_genai

    out = tmp_path_factory.mktemp("genai") / "int4"
    # a random tiny model has near-uniform logits, so int4 flips many argmaxes: gates set wide here
    return out, export_genai(tiny_lm_dir, out, precision="int4", lm_head="int8", accuracy_level=4,
                             quality_ids=WINDOWS, min_top1_agreement=0.3, max_ppl_increase_pct=50)


def test_fp32_export_matches_pytorch(genai_fp32):
    out, rep = genai_fp32
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "export_report.json"):
        assert (out / name).is_file(), name
    q = rep["quality"]
    assert q["passed"] and q["max_abs_logit_diff"] < 2e-3
    assert q["top1_agreement"] > 0.99 and abs(q["ppl_increase_pct"]) < 0.1
    assert rep["ops"].get("GroupQueryAttention") == 2 and "MatMulNBits" not in rep["ops"]
    assert json.loads((out / "export_report.json").read_text())["format"] == "genai"


def test_builder_graph_is_stamped_with_the_preset_opset(genai_fp32, tmp_path):
    import onnx

    from edgeft.errors import UnsupportedError
    from edgeft.exporters.genai import stamp_opset

    out, rep = genai_fp32
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    declared = {o.domain: o.version for o in model.opset_import}
    assert rep["opset"] == {"declared_by_builder": 22, "stamped": 18} and declared[""] == 18  # phones run <= 20
    # an op that did not exist at the asked opset is refused, naming the node and the fix
    model.graph.node.append(onnx.helper.make_node("Gelu", ["x"], ["y"], name="late_op"))  # ONNX Gelu: opset 20
    for o in model.opset_import:
        if o.domain == "":
            o.version = 22
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(UnsupportedError, match="late_op .Gelu. has no ONNX schema at opset 18.*at least 22"):
        stamp_opset(tmp_path / "m.onnx", 18)


def test_int4_export_quantizes_body_and_int8_head(genai_int4):
    import onnx

    out, rep = genai_int4
    g = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in g.node if n.op_type == "MatMulNBits"}
    head = [b for name, b in bits.items() if "lm_head" in name]
    body = [b for name, b in bits.items() if "lm_head" not in name]
    assert head == [8] and body and set(body) == {4}
    acc = {next(a.i for a in n.attribute if a.name == "accuracy_level") for n in g.node if n.op_type == "MatMulNBits"}
    assert acc == {4}
    q = rep["quality"]
    assert 0 < q["ppl_increase_pct"] < 50 or q["ppl_increase_pct"] <= 0
    assert 0.3 <= q["top1_agreement"] <= 1 and q["max_abs_logit_diff"] > 0
    assert rep["size_bytes"] > 0


def test_quality_gate_fails_loudly(tiny_lm_dir, tmp_path):
    from edgeft.errors import ParityError
    from edgeft.exporters.genai import export_genai

    with pytest.raises(ParityError, match="top-1 agreement"):
        export_genai(tiny_lm_dir, tmp_path / "x", precision="int4",
                     quality_ids=WINDOWS, min_top1_agreement=1.01)


def test_bad_options_are_config_errors(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.exporters.genai import export_genai

    with pytest.raises(ConfigError, match="unknown option"):
        export_genai(tiny_lm_dir, tmp_path / "x", precison="int4")
    with pytest.raises(ConfigError, match="lm_head"):
        export_genai(tiny_lm_dir, tmp_path / "x", lm_head="int2")


def test_genai_runtime_matches_ort_runtime(genai_fp32):
    from edgeft.runtime.genai import GenaiLM
    from edgeft.runtime.lm import OrtLM, load_lm

    out, _ = genai_fp32
    og_lm, ort_lm = load_lm(out, "genai", 1), OrtLM(out, threads=1)
    assert isinstance(og_lm, GenaiLM)
    w = np.asarray(WINDOWS[0])
    np.testing.assert_allclose(og_lm.logits(w), ort_lm.logits(w), atol=1e-4, rtol=0)
    prompt = WINDOWS[1][:9]
    ref = ort_lm.generate([prompt], 12, [])[0]
    got = og_lm.generate([prompt], 12, [])[0]  # og stops early only at the model's own EOS
    assert len(got) >= 1 and got == ref[:len(got)]
    ttft, steps = og_lm.timed_generate(prompt, 12)
    assert ttft > 0 and len(steps) == 11


def test_preset_and_pipeline_artifact(genai_int4):
    """The preset's description of the builder's graph, and the validate entry the pipeline reads from it."""
    from edgeft.config.loader import load_preset
    from edgeft.exporters import describe_export
    from edgeft.validate import Artifact

    out, rep = genai_int4
    p = load_preset("genai-int4")
    assert p.format == "genai" and p.options["precision"] == "int4"
    describe_export(out, p, "causal-lm")
    check_artifact(out, name="genai-int4", format="genai", runtime="onnx", precision="int4", int8_mode=None,
                   main_file="model.onnx", size_bytes=rep["size_bytes"])
    art = Artifact.at(out, "export")
    assert art.format == "onnx" and art.precision == "int4" and art.path == out


@pytest.mark.parametrize("scheme,opts", [
    ("int4-gptq", {"block_size": 32, "symmetric": False, "lm_head": "int8", "embeddings": "int8"}),
    ("auto", {"max_ppl_increase_pct": 50.0, "candidates": ["int4/b32", "int8/b32", "fp32"], "sensitivity_windows": 2,
              "check_windows": 2, "lm_head": "int8", "embeddings": "int8"}),
])
def test_calibrated_schemes_on_the_builder_graph(genai_fp32, tmp_path, scheme, opts):
    """edgeft's GPTQ / auto quantize the builder's fp32 graph (fused qkv, GroupQueryAttention, the
    tied [H, V] head read through a Transpose for the embedding); both runtimes run the result."""
    import onnx

    from edgeft.quantize import quantize
    from edgeft.runtime.genai import GenaiLM
    from edgeft.runtime.lm import OrtLM

    src, _ = genai_fp32
    calib = [list(range(3 + 7 * i, 67 + 7 * i)) for i in range(4)]
    out = tmp_path / scheme
    rep = quantize(src, out, scheme, opts, calibration_ids=calib, quality_ids=[np.asarray(w) for w in WINDOWS])
    assert (out / "genai_config.json").is_file() and not (out / "model.onnx.data").exists()
    g = onnx.load(str(out / "model.onnx")).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("GroupQueryAttention") == 2 and "MatMul" not in ops
    gathers = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1 and "Transpose" not in ops  # the embedding reads the head's int8 matrix
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in g.node if n.op_type == "MatMulNBits"}
    assert bits["/lm_head/MatMul_Q8"] == 8 and len(bits) == 11
    assert rep["size_ratio"] < 0.5 and rep["top1_agreement"] > 0.8
    w = np.asarray(WINDOWS[0])
    np.testing.assert_allclose(GenaiLM(out, 1).logits(w), OrtLM(out, threads=1).logits(w), atol=1e-4, rtol=0)


def test_auto_plan_from_another_export(genai_fp32, tmp_path):
    """A plan measured on the optimum export (self_attn/mlp blocks) applies to the builder's graph
    (attn/mlp blocks, fused qkv): block precisions follow the plan, the search is skipped."""
    import onnx

    from edgeft.errors import ConfigError
    from edgeft.quantize import quantize

    src, _ = genai_fp32
    plan = {"groups": {"/model/layers.0/self_attn": {"precision": "int8/b32"},
                       "/model/layers.0/mlp": {"precision": "int4/b32"},
                       "/model/layers.1/self_attn": {"precision": "int4/b32"},
                       "/model/layers.1/mlp": {"precision": "int4/b16"}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    calib = [list(range(3 + 7 * i, 67 + 7 * i)) for i in range(4)]
    opts = {"max_ppl_increase_pct": 50.0, "candidates": ["int4/b32", "int4/b16", "int8/b32", "fp32"],
            "sensitivity_windows": 2, "check_windows": 2, "plan_from": str(tmp_path / "plan.json")}
    rep = quantize(src, tmp_path / "q", "auto", opts, calibration_ids=calib)
    g = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    attr = {n.name: {a.name: a.i for a in n.attribute} for n in g.node if n.op_type == "MatMulNBits"}
    assert attr["/model/layers.0/attn/qkv_proj/MatMul_Q8"]["bits"] == 8
    assert attr["/model/layers.0/attn/o_proj/MatMul_Q8"]["bits"] == 8
    assert attr["/model/layers.1/mlp/down_proj/MatMul_Q4"]["block_size"] == 16
    assert attr["/model/layers.1/attn/qkv_proj/MatMul_Q4"]["block_size"] == 32
    p = rep["options"]["plan"]
    assert p["plan_from"] == str(tmp_path / "plan.json") and [s["simulated"] for s in p["search"]] == [False]
    plan["groups"].pop("/model/layers.1/mlp")
    (tmp_path / "short.json").write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match="no precision for /model/layers.1/mlp"):
        quantize(src, tmp_path / "x", "auto", {**opts, "plan_from": str(tmp_path / "short.json")},
                 calibration_ids=calib)


def test_auto_measured_sensitivity_on_the_builder_graph(genai_fp32, tmp_path):
    """sensitivity: measured feeds each trial's weights to the simulation session on the builder graph
    too (its GroupQueryAttention graphs decode IO-bound by default, which would bypass the weight feeds
    and score every trial as the fp32 model: no group sensitive, the plan all first rung)."""
    from edgeft.quantize import quantize

    src, _ = genai_fp32
    calib = [list(range(3 + 7 * i, 67 + 7 * i)) for i in range(4)]
    opts = {"max_ppl_increase_pct": 1e6, "candidates": ["int4/b32", "int8/b32", "fp32"], "sensitivity_windows": 2,
            "check_windows": 2, "sensitivity": "measured"}
    plan = quantize(src, tmp_path / "m", "auto", opts, calibration_ids=calib)["options"]["plan"]
    assert all(g["kl_per_rung"]["int4/b32"] > g["kl_per_rung"]["int8/b32"] > 0 for g in plan["groups"].values())
    assert all(g["proxy_per_rung"]["int4/b32"] > g["proxy_per_rung"]["int8/b32"] > 0 for g in plan["groups"].values())
