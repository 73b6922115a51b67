"""``edgeft.run`` on the tiny BERT classifier with ``export.extra: [litert-int8-full]``: the pipeline builds the
full-integer .tflite (calibrated on training rows), validate scores it, times it, passes it on the phone NPU and
reports where the Edge TPU compiler would split it, and the bundle that ships it verifies (litert extra needed)."""

from __future__ import annotations

import pytest

import edgeft
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
    recipe["export"]["extra"] = ["litert-int8-full"]
    recipe["export"]["budgets"] = {"litert-int8-full": {"accuracy": {"max_degradation": 0.4}}}  # its own gate
    recipe["quantize"] = recipe["quantize"][:1]  # one ONNX int8 artifact beside the tflite one
    recipe["validate"]["devices"] = ["host", "edge-tpu", "phone-npu"]
    recipe["validate"]["require"] = ["phone-npu"]  # only the full-integer tflite can pass it
    return edgeft.run(write_recipe(root / "tiny-cls-litert.yaml", recipe), runs_root=root / "runs")


def test_extra_tflite_is_exported_calibrated_on_training_rows(run):
    exp = read_json(run.run_dir / "export" / "stage.json")["metrics"]["extra"]["litert-int8-full"]
    assert exp["format"] == "tflite" and exp["seq"] == 16 and exp["quantization"]["calibration_rows"] == 128
    assert exp["vs_reference"]["samples"] == 32 and exp["vs_reference"]["label_agreement"] >= 0.9
    assert (run.run_dir / "export" / "litert-int8-full" / "model.tflite").is_file()


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


def test_full_integer_tflite_passes_phone_npu_and_the_edge_tpu_split_is_reported(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    npu = rep["devices"]["phone-npu"]["results"]
    assert npu["litert-int8-full"]["compatible"], npu["litert-int8-full"]["reasons"]
    assert "BATCH_MATMUL" not in rep["artifacts"]["litert-int8-full"]["tflite"]["op_counts"]  # attention: mul-sum
    tpu = rep["devices"]["edge-tpu"]["results"]["litert-int8-full"]
    plan = tpu["tflite"]["edge_tpu"]
    # every op is on Coral's list and every tensor within 3 non-unit dims, but FULLY_CONNECTED over a sequence
    # has a 2-D output (the table allows one-dimensional): the compiler would stop at the first one
    assert not tpu["compatible"] and plan["split"]["op"] == "FULLY_CONNECTED" and 0 < plan["ops_mapped"] < 20
    assert all(p["op"] in ("FULLY_CONNECTED", "SOFTMAX") for p in plan["problems"])
    assert any("output tensor is one-dimensional" in r for r in tpu["reasons"])
    # the ONNX artifacts are refused by the Edge TPU by format, naming the fix
    assert not rep["devices"]["edge-tpu"]["results"]["int8-dynamic"]["compatible"]


def test_bundle_ships_the_tflite_and_its_embedding_table_and_verifies(run):
    from edgeft.release import verify

    res = verify(run.bundle)
    paths = {e["path"] for e in res.manifest["files"]}
    assert "artifacts/litert-int8-full/model.tflite" in paths
    assert "artifacts/litert-int8-full/embeddings.safetensors" in paths
    assert res.manifest["metrics"]["litert-int8-full"]["accuracy"] is not None


def test_extra_artifact_is_gated_on_its_own_export_budget(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    limits = {g["artifact"]: g["limit"] for g in rep["gates"] if g["name"] == "accuracy max_degradation"}
    assert limits["litert-int8-full"] == 0.4 and limits["int8-dynamic"] == 0.5  # validate.budgets for the rest
