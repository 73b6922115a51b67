"""``edgeft.run`` on a tiny BERT sequence classifier: data split -> classify -> merge -> export (static shapes)
-> int8 dynamic / static QDQ / weight-only -> validate (accuracy rows, per-device compatibility) -> package."""

from __future__ import annotations

import json

import pytest

import edgeft
from artifact_checks import check_run
from conftest import build_tiny_bert, read_json, sentiment_records, write_recipe
from edgeft.pipeline.rundir import STAGES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QUANTIZED = ["int8-dynamic", "int8-static", "int8-weight"]


def _recipe(model_dir, tsv) -> dict:
    return {
        "name": "tiny-cls", "version": "0.0.1", "description": "Tiny random BERT classifier (test fixture).",
        "model": str(model_dir),
        "data": {"files": {"train": str(tsv), "text_field": "sentence", "label_field": "label", "n_eval": 32,
                           "label_names": {"0": "negative", "1": "positive"}, "seed": 3}},
        "finetune": {"method": "lora", "objective": "classify", "epochs": 8, "batch_size": 16, "learning_rate": 1e-2,
                     "max_seq_len": 16, "lora": {"r": 8, "alpha": 16}, "early_stopping": None, "warmup_ratio": 0.0},
        "export": {"preset": "onnx-cls", "static_shapes": {"batch": 1, "seq": 16}},
        "quantize": [
            {"name": "int8-dynamic", "scheme": "int8-dynamic", "max_accuracy_drop": 0.5},
            {"name": "int8-static", "scheme": "int8-static", "options": {"preprocess": False}, "max_accuracy_drop": 0.5},
            {"name": "int8-weight", "scheme": "int8-weight", "options": {"block_size": 32}, "max_accuracy_drop": 0.5},
        ],
        "validate": {"devices": ["host", "phone-cpu", "phone-npu", "edge-tpu"], "require": ["host"],
                     "eval_examples": 32, "latency": {"warmup": 0, "repeats": 2},
                     "budgets": {"accuracy": {"max_degradation": 0.5}, "erased_margin": 0.0}},
        "package": {"tarball": False, "intended_use": "tests", "limitations": "toy data"},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("cls")
    model = build_tiny_bert(root / "model")
    tsv = root / "toy.tsv"
    rows = sentiment_records(160, seed=1)
    tsv.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'pos')}\n" for r in rows))
    recipe = write_recipe(root / "tiny-cls.yaml", _recipe(model, tsv))
    return edgeft.run(recipe, runs_root=root / "runs")


def test_every_stage_runs_and_data_is_split(run):
    assert list(run.timings) == STAGES
    data = read_json(run.run_dir / "data" / "stage.json")["metrics"]
    assert (data["n_train"], data["n_eval"]) == (128, 32)
    train = [json.loads(x) for x in (run.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    ev = [json.loads(x) for x in (run.run_dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert set(train[0]) == {"text", "label"} and {r["label"] for r in train} == {"negative", "positive"}
    assert not {r["text"] for r in ev} & {r["text"] for r in train} or len(ev) == 32  # split by rows
    ft = read_json(run.run_dir / "finetune" / "stage.json")["metrics"]
    assert ft["labels"] == ["negative", "positive"] and ft["eval_accuracy"] >= 0.8, ft
    merged_cfg = read_json(run.run_dir / "merge" / "config.json")
    assert merged_cfg["id2label"] == {"0": "negative", "1": "positive"}
    exp = read_json(run.run_dir / "export" / "stage.json")["metrics"]
    assert exp["task"] == "text-classification" and exp["max_abs_diff"] < 2e-3
    assert exp["static_shapes"]["batch"] == 1 and exp["static_shapes"]["seq"] == 16


def test_quantize_reports_accuracy_vs_input(run):
    q = read_json(run.run_dir / "quantize" / "stage.json")["metrics"]
    for name in QUANTIZED:
        r = q[name]
        assert 0.5 <= r["accuracy_input"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy_drop"] == pytest.approx(r["accuracy_input"] - r["accuracy"])
        assert r["quality_examples"] == 32 and 0.0 <= r["label_agreement"] <= 1.0
        assert r["static_shapes"]["parity_vs_dynamic"]["passed"]
    assert q["int8-static"]["options"]["calibration_windows"] == 128  # every training text, none from eval


def test_report_has_accuracy_rows_and_device_verdicts(run):
    rep = run.report.to_dict()
    assert rep["task"] == "classification" and rep["passed"] is True, rep["gates"]
    assert list(rep["artifacts"]) == ["base", "merged", "onnx-fp32", *QUANTIZED]
    merged = rep["artifacts"]["merged"]["accuracy"]
    assert merged["accuracy"] >= 0.8 and merged["label_agreement"] == 1.0
    fp32 = rep["artifacts"]["onnx-fp32"]["accuracy"]
    assert fp32["accuracy"] == pytest.approx(merged["accuracy"]) and fp32["max_abs_logit_diff"] < 1e-3
    for name in QUANTIZED:
        a = rep["artifacts"][name]
        assert 0.0 <= a["accuracy"]["accuracy"] <= 1.0 and a["accuracy"]["n_examples"] == 32
        assert (a["latency"]["batch"], a["latency"]["seq_len"]) == (1, 16)  # the graph's fixed shape
        assert a["onnx"]["dynamic_inputs"] == []
    assert {g["name"] for g in rep["gates"]} == {"accuracy max_degradation"}
    npu = rep["devices"]["phone-npu"]["results"]
    assert npu["int8-static"]["compatible"], npu["int8-static"]["reasons"]
    assert not npu["int8-dynamic"]["compatible"] and not npu["onnx-fp32"]["compatible"]
    tpu = rep["devices"]["edge-tpu"]["results"]["int8-static"]
    assert not tpu["compatible"] and tpu["reasons"] == ["format onnx is not supported on edge-tpu (formats: tflite)"]
    assert any("litert-int8-edgetpu" in s for s in tpu["suggestions"])
    html = (run.run_dir / "validate" / "report.html").read_text()
    assert "accuracy" in html.lower()


def test_bundle_verifies(run):
    from edgeft.release import verify

    res = verify(run.bundle)
    paths = {e["path"] for e in res.manifest["files"]}
    assert "artifacts/int8-static/model.onnx" in paths and "tokenizer/config.json" in paths
    assert res.manifest["metrics"]["int8-static"]["accuracy"] is not None
    arts = check_run(run.run_dir, run.report, "classifier", run.bundle)
    assert [arts[n].int8_mode for n in QUANTIZED] == ["dynamic", "static", "weight-only"]
    # the fixed-shape graph replaced the quantized one after it was described: the size is the fixed graph's
    q = read_json(run.run_dir / "quantize" / "stage.json")["metrics"]
    assert all(arts[n].size_bytes == q[n]["size_bytes"] for n in QUANTIZED)


def test_split_is_deterministic_and_disjoint(tmp_path):
    from edgeft.config.schema import FileData
    from edgeft.pipeline.classify import file_records

    tsv = tmp_path / "d.tsv"
    tsv.write_text("label\tsentence\n" + "".join(f"{i % 2}\ttext number {i}\n" for i in range(50)))
    f = FileData(train=str(tsv), text_field="sentence", label_field="label", n_eval=10, n_train=30, seed=7)
    train, ev, source = file_records(f, tmp_path)
    assert (len(train), len(ev)) == (30, 10) and source["split"]["rows"] == 50
    assert not {r["text"] for r in train} & {r["text"] for r in ev}
    assert (train, ev) == file_records(f, tmp_path)[:2]
    other = file_records(f.model_copy(update={"seed": 8}), tmp_path)[1]
    assert {r["text"] for r in other} != {r["text"] for r in ev}
    frac = file_records(f.model_copy(update={"n_eval": None, "eval_fraction": 0.2, "n_train": None}), tmp_path)
    assert (len(frac[0]), len(frac[1])) == (40, 10)


def test_missing_file_and_bad_split_are_one_line_errors(tmp_path):
    import pydantic

    from edgeft.config.schema import FileData
    from edgeft.errors import DataError
    from edgeft.pipeline.classify import file_records

    f = FileData(train="nope/sst2.tsv", text_field="sentence", label_field="label", n_eval=10)
    with pytest.raises(DataError, match=r"data.files.train: .*nope/sst2.tsv not found"):
        file_records(f, tmp_path)
    with pytest.raises(pydantic.ValidationError, match="exactly one of n_eval / eval_fraction"):
        FileData(train="a.tsv", text_field="s", label_field="l")
    with pytest.raises(pydantic.ValidationError, match="both text_field and label_field"):
        FileData(train="a.tsv", text_field="s", n_eval=3)


def test_calibration_rows_share_one_length(tmp_path):
    from conftest import build_bert_tokenizer
    from edgeft.pipeline.classify import calibration_ids

    tok = build_bert_tokenizer(tmp_path / "tok")
    recs = [{"text": " ".join(["good"] * k)} for k in (1, 3, 5, 8, 12, 20)]
    rows = calibration_ids(tmp_path / "tok", recs, max_length=64, n=3, length=8)
    # three texts reach 8 tokens ([CLS] + 6 words + [SEP] cut from longer ones); the shorter are left out
    assert [len(r) for r in rows] == [8, 8, 8]
    assert all(r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id for r in rows)
    # five rows wanted, but only three texts reach 8 tokens: the length drops to the 5th longest (5)
    rows = calibration_ids(tmp_path / "tok", recs, max_length=64, n=5, length=8)
    assert [len(r) for r in rows] == [5] * 5
