"""``edgeft.run`` on the tiny BERT classifier with ``export.extra: [litert-int8-full, litert-int8-edgetpu]``: the
pipeline builds both full-integer .tflite graphs (calibrated on training rows), validate scores and times them,
the phone NPU passes the first and the Edge TPU the second (every op mapped, the table's per-op limits included),
and the bundle that ships them verifies (litert extra needed)."""

from __future__ import annotations

import pytest

import edgeft
from artifact_checks import check_run
from conftest import build_tiny_bert, read_json, sentiment_records, write_recipe

pytest.importorskip("litert_torch", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("ai_edge_quantizer", reason="needs the litert extra: pip install 'edgeft[litert]'")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    from test_pipeline_classify_tiny import _recipe

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("cls-litert")
    model = build_tiny_bert(root / "model")
    tsv = root / "toy.tsv"
    rows = sentiment_records(160, seed=1)
    tsv.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'pos')}\n" for r in rows))
    recipe = _recipe(model, tsv)
    recipe["name"] = "tiny-cls-litert"
    recipe["export"]["extra"] = ["litert-int8-full", "litert-int8-edgetpu"]
    recipe["export"]["budgets"] = {"litert-int8-full": {"accuracy": {"max_degradation": 0.4}}}  # its own gate
    recipe["quantize"] = recipe["quantize"][:1]  # one ONNX int8 artifact beside the tflite one
    recipe["finetune"]["litert_qat"] = {"steps": 4, "recalibrate_every": 2, "calibration_examples": 32}
    recipe["validate"]["devices"] = ["host", "edge-tpu", "phone-npu"]
    recipe["validate"]["require"] = ["edge-tpu", "phone-npu"]  # only the full-integer tflite can pass these two
    return edgeft.run(write_recipe(root / "tiny-cls-litert.yaml", recipe), runs_root=root / "runs")


def test_extra_tflite_is_exported_calibrated_on_training_rows(run):
    exp = read_json(run.run_dir / "export" / "stage.json")["metrics"]["extra"]["litert-int8-full"]
    assert exp["format"] == "tflite" and exp["seq"] == 16 and exp["quantization"]["calibration_rows"] == 128
    assert exp["vs_reference"]["samples"] == 32 and exp["vs_reference"]["label_agreement"] >= 0.9
    assert (run.run_dir / "export" / "litert-int8-full" / "model.tflite").is_file()


def test_finetune_ends_with_the_litert_qat_steps(run):
    """finetune.litert_qat ran after the float fine-tune on the simulated int8 graph, and says what it kept."""
    qat = read_json(run.run_dir / "finetune" / "stage.json")["metrics"]["litert_qat"]
    assert qat["preset"] == "litert-int8-full" and qat["steps"] == 4 and [h["step"] for h in qat["history"]] == [2, 4]
    assert qat["tensors_rounded"] > 50 and qat["kept_step"] in (0, 2, 4)
    assert 0.0 <= qat["accuracy_int8_simulated"] <= 1.0


def test_validate_scores_and_times_the_tflite_artifact(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    a = rep["artifacts"]["litert-int8-full"]
    assert (a["format"], a["precision"], a["int8_mode"]) == ("tflite", "int8", "full-integer")
    acc = a["accuracy"]
    assert acc["n_examples"] == 32 and acc["max_length"] == 16 and 0.0 <= acc["macro_f1"] <= 1.0
    assert acc["accuracy"] >= rep["artifacts"]["merged"]["accuracy"]["accuracy"] - 0.2
    assert 0.8 <= acc["label_agreement"] <= 1.0
    assert a["latency"]["per_inference_ms_p50"] > 0 and a["latency"]["seq_len"] == 16
    assert a["size_bytes"] > (run.run_dir / "export" / "litert-int8-full" / "model.tflite").stat().st_size  # + table
    assert a["tflite"]["inputs"][0]["dtype"] == "int8" and a["tflite"]["float_ops"] == []


def test_full_integer_tflite_passes_edge_tpu_with_every_op_mapped(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    tpu = rep["devices"]["edge-tpu"]["results"]["litert-int8-edgetpu"]
    assert tpu["compatible"], tpu["reasons"]
    plan = tpu["tflite"]["edge_tpu"]
    assert plan["split"] is None and plan["ops_mapped"] == plan["ops_total"] > 0 and plan["mac_fraction"] == 1.0
    ops = rep["artifacts"]["litert-int8-edgetpu"]["tflite"]["op_counts"]
    assert "BATCH_MATMUL" not in ops and "SOFTMAX" not in ops  # attention: mul-sum, softmax: decomposed
    assert ops["CONV_2D"] > 0 and ops.get("FULLY_CONNECTED", 0) == 2  # linear: conv1x1; pooler + classifier rows
    npu = rep["devices"]["phone-npu"]["results"]
    assert npu["litert-int8-full"]["compatible"], npu["litert-int8-full"]["reasons"]
    # the CPU form splits at its first FULLY_CONNECTED over the sequence; ONNX is refused by format
    cpu_form = rep["devices"]["edge-tpu"]["results"]["litert-int8-full"]
    assert not cpu_form["compatible"] and cpu_form["tflite"]["edge_tpu"]["split"]["op"] == "FULLY_CONNECTED"
    assert any("output tensor is one-dimensional" in r for r in cpu_form["reasons"])
    assert not rep["devices"]["edge-tpu"]["results"]["int8-dynamic"]["compatible"]


def test_bundle_ships_the_tflite_and_its_embedding_table_and_verifies(run):
    from edgeft.release import verify

    res = verify(run.bundle)
    paths = {e["path"] for e in res.manifest["files"]}
    assert "artifacts/litert-int8-full/model.tflite" in paths and "artifacts/litert-int8-edgetpu/model.tflite" in paths
    assert "artifacts/litert-int8-full/embeddings.safetensors" in paths
    assert res.manifest["metrics"]["litert-int8-full"]["accuracy"] is not None
    arts = check_run(run.run_dir, run.report, "classifier", run.bundle)
    assert arts["litert-int8-full"].weights == ["embeddings.safetensors", "model.tflite"]


def test_extra_artifact_is_gated_on_its_own_export_budget(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    limits = {g["artifact"]: g["limit"] for g in rep["gates"] if g["name"] == "accuracy max_degradation"}
    assert limits["litert-int8-full"] == 0.4 and limits["int8-dynamic"] == 0.5  # validate.budgets for the rest
