"""``edgeft.run`` on a tiny random EfficientNet-Lite and a folder of striped images: data split, fine-tune, merge,
export to ONNX, TorchScript, LiteRT fp32 and full-integer int8 and ExecuTorch (each parity-checked), ONNX int8
static, validate on the Edge TPU, a phone NPU and the host, and a bundle that ships the preprocessing and verifies."""

from __future__ import annotations

import json

import pytest

import edgeft
from artifact_checks import check_run
from conftest import IMAGE_CLASSES, build_tiny_cnn, read_json, write_image_folder, write_recipe
from edgeft.pipeline.rundir import STAGES

pytest.importorskip("litert_torch", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'edgeft[executorch]'")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def _recipe(model_dir, images) -> dict:
    return {
        "name": "tiny-img", "version": "0.0.1", "description": "Tiny random EfficientNet-Lite (test fixture).",
        "model": str(model_dir),
        "data": {"images": {"train": str(images), "n_eval": 24, "seed": 1}},
        "finetune": {"method": "full", "objective": "image-classify", "epochs": 4, "batch_size": 8,
                     "learning_rate": 1e-2, "warmup_ratio": 0.0, "early_stopping": None,
                     "image": {"flip": False, "crop_scale": [0.8, 1.0]}},
        "merge": {"tolerance": 1e-4},
        "export": {"preset": "onnx-image", "tolerance": 1e-3,
                   "extra": ["torchscript", "executorch-fp32", "litert-image-fp32", "litert-image-int8"]},
        "quantize": [{"name": "int8", "scheme": "int8-static", "max_accuracy_drop": 0.5,
                      "options": {"reduce_range": True, "activation_type": "quint8"}}],
        "validate": {"devices": ["host", "phone-npu", "edge-tpu", "mcu"], "require": ["edge-tpu", "phone-npu", "mcu"],
                     "eval_examples": 24, "latency": {"warmup": 0, "repeats": 2},
                     "budgets": {"accuracy": {"max_degradation": 0.5}}},
        "package": {"tarball": False, "intended_use": "tests", "limitations": "toy data"},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("img")
    model = build_tiny_cnn(root / "model")
    images = write_image_folder(root / "images", 40, seed=0)
    return edgeft.run(write_recipe(root / "tiny-img.yaml", _recipe(model, images)), runs_root=root / "runs")


def test_every_stage_runs_and_the_eval_split_is_held_out(run):
    assert list(run.timings) == STAGES
    data = read_json(run.run_dir / "data" / "stage.json")["metrics"]
    assert (data["n_train"], data["n_eval"]) == (96, 24)
    train = {json.loads(x)["image"] for x in (run.run_dir / "data" / "train.jsonl").read_text().splitlines()}
    ev = {json.loads(x)["image"] for x in (run.run_dir / "data" / "eval.jsonl").read_text().splitlines()}
    assert not train & ev
    ft = read_json(run.run_dir / "finetune" / "stage.json")["metrics"]
    assert ft["n_train"] + ft["validation_split"]["images"] == 96  # epochs are picked on a slice of train
    assert ft["labels"] == sorted(IMAGE_CLASSES)


def test_each_export_is_parity_checked_by_its_runtime(run):
    exp = read_json(run.run_dir / "export" / "stage.json")["metrics"]
    assert exp["format"] == "onnx" and exp["input_shape"] == [1, 3, 32, 32]
    assert exp["vs_reference"]["relative_diff"] <= 1e-3
    extra = exp["extra"]
    for name in ("torchscript", "executorch-fp32", "litert-image-fp32"):
        assert extra[name]["vs_reference"]["label_agreement"] == 1.0, name
    q = extra["litert-image-int8"]
    assert q["layout"] == "nhwc" and q["int8_mode"] == "full-integer" and q["quantize"]["calibration_rows"] == 96
    assert q["graph"]["inputs"][0]["dtype"] == "int8" and q["graph"]["float_ops"] == []
    meta = read_json(run.run_dir / "export" / "litert-image-int8" / "image.json")
    assert meta["labels"] == sorted(IMAGE_CLASSES) and meta["preprocessing"]["size"] == 32


def test_validate_scores_every_artifact_and_the_int8_tflite_maps_to_the_edge_tpu(run):
    rep = read_json(run.run_dir / "validate" / "report.json")
    assert rep["task"] == "image-classification" and rep["passed"]
    merged = rep["artifacts"]["merged"]["accuracy"]["accuracy"]
    assert merged >= 0.6
    for name in ("onnx-fp32", "torchscript", "executorch-fp32", "litert-image-fp32"):
        assert rep["artifacts"][name]["accuracy"]["accuracy"] == merged, name
        assert rep["artifacts"][name]["latency"]["per_inference_ms_p50"] > 0
    tpu = rep["devices"]["edge-tpu"]["results"]["litert-image-int8"]
    assert tpu["compatible"], tpu["reasons"]
    plan = tpu["tflite"]["edge_tpu"]
    assert plan["split"] is None and plan["ops_mapped"] == plan["ops_total"] > 0
    assert not rep["devices"]["edge-tpu"]["results"]["litert-image-fp32"]["compatible"]
    assert rep["devices"]["phone-npu"]["results"]["int8"]["compatible"]
    assert "litert-image-int8" in rep["devices"]["phone-npu"]["deployable"]
    mcu = rep["devices"]["mcu"]["results"]["litert-image-int8"]  # ran in TFLite Micro: arena and projection gates
    assert mcu["passed"] and mcu["tflite"]["tflite_micro"]["ran"]
    gates = {g["name"]: g for g in mcu["gates"]}
    assert gates["ram_mb (measured-tflite-micro)"]["value"] == mcu["tflite"]["tflite_micro"]["arena_used_bytes"] / 2**20
    proj = mcu["latency"]["projected"]
    assert proj["per_inference_ms_p50"] == pytest.approx(2 * proj["macs"] / (proj["int8_gops"] * 1e6))
    assert "per_inference_ms (projected)" in gates


def test_bundle_ships_graphs_with_their_preprocessing_and_verifies(run):
    from edgeft.release import verify

    manifest = read_json(run.bundle / "manifest.json")
    files = {f["path"] for f in manifest["files"]}
    assert "artifacts/litert-image-int8/model.tflite" in files and "artifacts/litert-image-int8/image.json" in files
    assert "model/config.json" in files and "tokenizer/config.json" not in files
    assert verify(run.bundle).n_files == len(files)
    arts = check_run(run.run_dir, read_json(run.run_dir / "validate" / "report.json"), "image-classifier", run.bundle)
    assert (arts["litert-image-int8"].precision, arts["litert-image-int8"].int8_mode) == ("int8", "full-integer")
    assert "image.json" in arts["int8"].files and arts["int8"].producer == "int8-static"
