"""report.json: the typed report (every variant, round trip, malformed files, JSON Schema), writing, and the summary
table (rendered through a recording rich Console)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeft.errors import ConfigError
from edgeft.metrics.gate import GateResult
from edgeft.validate.report import (
    ClassifierAccuracy,
    ClassifierArtifact,
    ClassifierReport,
    EncoderReport,
    ImageClassifierReport,
    LMReport,
    ValidationReport,
    print_summary,
    report_json_schema,
    summary_table,
    summary_text,
    write_json,
)

MB = 1024 * 1024


def _lat(ttft, tok_s, rss):
    return {"label": "measured-host", "threads": 2, "ttft_ms_p50": ttft, "ttft_ms_p95": ttft,
            "decode_tok_s": tok_s, "per_token_ms_p50": None, "per_token_ms_p95": None, "peak_rss_mb": rss}


def _acc(em, jv, ppl):
    return {"exact_match": em, "json_valid": jv, "perplexity": ppl, "top1_agreement": None, "kl": None}


def _art(role, fmt, prec, mode, size_mb, acc, lat):
    return {"role": role, "format": fmt, "precision": prec, "int8_mode": mode, "scheme": None,
            "size_bytes": int(size_mb * MB), "path": f"runs/q/{role}", "accuracy": acc, "latency": lat}


def _res(compatible, passed, reasons=(), gates=()):
    return {"compatible": compatible, "reasons": list(reasons), "suggestions": ["re-quantize"] if reasons else [],
            "warnings": [], "gates": [g.to_dict() for g in gates], "passed": passed}


def make_report() -> dict:
    """A quickstart-like report: int8 erased the fine-tune, int4 is too slow, nothing fits the TPU."""
    ttft_fail = GateResult("ttft_ms (measured-host)", "int4", 2100.0, 1500.0, False,
                           "ttft_ms_p50 2100 ms > max 1500 ms on phone-cpu (measured-host)", "phone-cpu")
    em_fail = GateResult("exact_match max_degradation", "int8", 0.9, 0.05, False,
                         "exact_match 0.06 vs merged 0.96: drop 0.9 > max 0.05")
    return {
        "schema_version": 1,
        "recipe": "quickstart",
        "reference": "merged",
        "passed": False,
        "artifacts": {
            # deliberately not in display order: merged and base are shown first
            "int8": _art("artifact", "onnx", "int8", "dynamic", 160.4, _acc(0.06, 0.5, 14.2), _lat(900, 22.0, 420)),
            "merged": _art("reference", "pytorch", "fp32", None, 513.0, _acc(0.96, 1.0, 12.0), None),
            "base": _art("base", "pytorch", "fp32", None, 513.0, _acc(0.02, 0.1, None), None),
            "int4": _art("artifact", "onnx", "int4", None, 110.0, _acc(0.939, 0.98, 12.6), _lat(2100, 30.5, 380)),
        },
        "devices": {
            "phone-cpu": {"class": "mobile", "threads": 4, "required": True, "passed": False, "results": {
                "int8": _res(True, False),
                "int4": _res(True, False, gates=[ttft_fail]),
            }},
            "edge-tpu": {"class": "tpu", "threads": 4, "required": False, "passed": False, "results": {
                "int8": _res(False, False, reasons=[
                    "int8 dynamic quantization (DynamicQuantizeLinear/MatMulInteger) is not supported on edge-tpu: "
                    "it runs only full-integer int8",
                    "edge-tpu requires static input shapes; dynamic inputs: input_ids [batch, sequence]"]),
                "int4": _res(False, False, reasons=["int4 MatMulNBits is not supported on edge-tpu (precisions: int8)"]),
            }},
        },
        "gates": [em_fail.to_dict()],
        "flags": ["FINE-TUNE ERASED: int8 exact_match 0.06 is within 0.10 of the base model's 0.02 (merged: 0.96)"],
    }


@pytest.fixture
def report() -> dict:
    return make_report()


def _render(renderable_fn, report, width) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    renderable_fn(report, console)
    return console.export_text()


def test_summary_contains_rows_verdicts_and_sections(report):
    text = summary_text(report)
    lines = text.splitlines()
    rows = [next(i for i, line in enumerate(lines) if line.lstrip().startswith(name + " "))
            for name in ("base", "merged", "int8", "int4")]
    assert rows == sorted(rows), "base, merged, then the rest in report order"
    int8_row = lines[rows[2]]
    assert "0.06 (-0.900)" in int8_row and "14.2 (+18.3%)" in int8_row and "onnx/int8 dynamic" in int8_row
    assert " 160 " in int8_row and "22.0" in int8_row
    assert "n/a" in int8_row and "FAIL" in int8_row
    assert "0.939 (-0.021)" in lines[rows[3]]
    assert "phone-cpu*" in text  # required device marked
    # sections below the table
    assert "FAIL int8 exact_match max_degradation: exact_match 0.06 vs merged 0.96: drop 0.9 > max 0.05" in text
    assert "FAIL [phone-cpu] int4 ttft_ms (measured-host): ttft_ms_p50 2100 ms > max 1500 ms" in text
    assert "FINE-TUNE ERASED: int8 exact_match 0.06" in text
    # one line per artifact x device, square brackets shown literally (no markup)
    assert "edge-tpu x int8: int8 dynamic quantization" in text and "(+1 more" in " ".join(text.split())
    assert "edge-tpu x int4: int4 MatMulNBits is not supported on edge-tpu (precisions: int8)" in text
    assert "overall: FAIL (required devices without a passing artifact: phone-cpu; accuracy gates failed)" in text


def test_pass_verdict(report):
    report["passed"] = True
    report["gates"] = []
    for d in report["devices"].values():
        for r in d["results"].values():
            r.update(compatible=True, passed=True, reasons=[], gates=[])
        d["passed"] = True
    report["flags"] = []
    text = summary_text(report)
    assert "overall: PASS" in text and "FAIL" not in text
    rows = [line for line in text.splitlines() if line.lstrip().startswith(("int8 ", "int4 "))]
    assert len(rows) == 2 and all(line.count("PASS") == 2 and "n/a" not in line for line in rows)
    assert "incompatible:" not in text and "failed gates:" not in text and "flags:" not in text


def test_erased_flag_is_bold_red(report):
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True, color_system="standard")
    print_summary(report, console)
    html = console.export_html(inline_styles=True)
    erased = html[html.index("FINE-TUNE ERASED") - 200:html.index("FINE-TUNE ERASED")]
    assert "font-weight: bold" in erased and "color: #800000" in erased


@pytest.mark.parametrize("width", [80, 100, 120])
def test_renders_at_terminal_widths_with_missing_values(report, width):
    sparse = copy.deepcopy(report)
    for a in sparse["artifacts"].values():
        a["accuracy"] = {k: None for k in a["accuracy"]}
        a["latency"] = None
        a["size_bytes"] = None
        a["format"] = None
    sparse["devices"]["phone-cpu"]["results"]["int4"]["passed"] = None
    sparse["devices"]["edge-tpu"]["results"].pop("int4")  # not checked on that device
    sparse["passed"] = None
    text = _render(print_summary, sparse, width)
    assert all(len(line) <= width for line in text.splitlines())
    assert "overall: UNKNOWN" in text
    assert "base" in text and "int4" in text
    # and the full report fits too
    full = _render(print_summary, report, width)
    assert all(len(line) <= width for line in full.splitlines())
    assert "PASS" in full or "FAIL" in full


@pytest.mark.parametrize("n_devices", [2, 4])
def test_narrow_terminal_keeps_numbers_whole(report, n_devices):
    for extra in ("pi5", "host")[: n_devices - 2]:
        report["devices"][extra] = copy.deepcopy(report["devices"]["edge-tpu"])
    wide = _render(print_summary, report, 160)
    assert "0.939 (-0.021)" in wide  # one line per artifact when it fits
    for width in (80, 100, 120):
        text = _render(print_summary, report, width)
        assert all(len(line) <= width for line in text.splitlines())
        for token in ("0.939", "(-0.021)", "(+18.3%)", "2100", "phone-cpu*" if width < 100 else "cpu*"):
            assert token in text, (width, token)
        verdicts = [line for line in text.splitlines() if line.lstrip().startswith("int8 ")]
        assert any("FAIL" in line and "n/a" in line for line in verdicts), text


def test_empty_report_renders():
    text = summary_text({"schema_version": 1, "recipe": "r", "reference": "merged", "passed": False,
                         "artifacts": {}, "devices": {}, "gates": [], "flags": []})
    assert "overall: FAIL" in text
    assert summary_table({}).row_count == 0


def test_table_columns(report):
    table = summary_table(report)
    headers = [c.header for c in table.columns]
    assert headers[:9] == ["artifact", "format", "size MB", "exact match", "JSON valid", "perplexity", "tok/s",
                           "TTFT ms", "RAM MB"]
    assert headers[9:] == ["phone-cpu*", "edge-tpu"]
    assert table.row_count == 4


# --------------------------------------------------------------------------- JSON


def test_write_json_converts_and_is_atomic(tmp_path, report):
    report["artifacts"]["int8"]["path"] = Path("runs/q/int8/model.onnx")
    report["artifacts"]["int8"]["accuracy"]["kl"] = np.float32(0.25)
    report["artifacts"]["int8"]["accuracy"]["perplexity"] = float("nan")
    report["artifacts"]["int8"]["size_bytes"] = np.int64(123)
    report["extra"] = {"hist": np.arange(3), "gate": GateResult("g", "a", 1.0, 2.0, True, "ok")}
    out = tmp_path / "sub" / "report.json"
    out.parent.mkdir()
    out.write_text("old")
    write_json(out, report)
    text = out.read_text()
    data = json.loads(text)
    assert text.startswith('{\n  "schema_version": 1,')
    a = data["artifacts"]["int8"]
    assert a["path"] == "runs/q/int8/model.onnx"
    assert a["accuracy"]["kl"] == 0.25 and a["accuracy"]["perplexity"] is None and a["size_bytes"] == 123
    assert data["extra"] == {"hist": [0, 1, 2], "gate": {"name": "g", "artifact": "a", "value": 1.0, "limit": 2.0,
                                                          "passed": True, "detail": "ok", "device": None}}
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temp file left behind


def test_write_json_failure_keeps_old_file(tmp_path):
    out = tmp_path / "report.json"
    out.write_text('{"old": true}')
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --------------------------------------------------------------------------- the typed report


def make_classifier_report(image: bool = False) -> dict:
    """A classifier report as validate writes it (``_validate_encoders``, or ``validate_images`` with ``image``)."""
    acc = {"exact_match": None, "json_valid": None, "perplexity": None, "top1_agreement": None, "kl": None,
           "n_examples": 24, "accuracy": 0.9583, "macro_f1": 0.9521, "label_agreement": 1.0,
           "max_abs_logit_diff": 2.29, "mean_abs_logit_diff": 0.37}
    acc.update({"top5": 1.0, "topk": 3, "per_class_f1": {"diagonal": 0.92, "vertical": 1.0}} if image else
               {"max_length": 16})
    lat = {"kind": "image" if image else "encoder", "per_inference_ms_p50": 0.058, "per_inference_ms_p95": 0.175,
           "samples_ms": [0.259, 0.074, 0.06], "batch": 1, "seq_len": None if image else 16, "threads": 2,
           "warmup": 0, "runs": 3, "load_seconds": 0.013, "peak_rss_mb": 49.9,
           **({"image_size": 32} if image else {}), "label": "measured-host"}
    gate = GateResult("per_inference_ms (projected)", "int8", 0.42, 100.0, True,
                      "per_inference_ms_p50 0.42 ms <= max 100 ms on mcu (projected)", "mcu").to_dict()
    result = {"compatible": True, "reasons": [], "suggestions": [], "warnings": [],
              "tflite": {"runtime": "tflite-micro", "io_int8": True}, "est_ram_mb": None, "gates": [gate],
              "passed": True, "gated_on": "projected",
              "latency": {"measured-host": {"label": "measured-host", "per_inference_ms_p50": 0.064, "threads": 1,
                                            "batch": 1, "seq_len": None},
                          "projected": {"label": "projected", "per_inference_ms_p50": 0.42, "macs": 201696,
                                        "int8_gops": 0.96},
                          "measured-device": None}}
    kind = "image-classifier" if image else "classifier"
    return {
        "schema_version": 1, "recipe": "tiny-img" if image else "tiny-cls", "kind": "encoder",
        "task": "image-classification" if image else "classification", "reference": "merged", "passed": True,
        "protocol": {"eval_examples": 24, "classification": "argmax of the logits vs the eval labels",
                     "latency": {"prompt": "set a timer", "new_tokens": 32, "warmup": 0, "repeats": 2, "batch": 1,
                                 "seq_len": 128, **({"per_inference": "one image"} if image else {}),
                                 "host_cpus": 2}},
        **({"labels": ["diagonal", "vertical"]} if image else {}),
        "artifacts": {
            "merged": {"role": "reference", "kind": kind, "format": "pytorch", "precision": "fp32", "int8_mode": None,
                       "scheme": None, "size_bytes": 42000, "path": "runs/x/merge", "accuracy": acc, "latency": None},
            "int8": {"role": "artifact", "kind": kind, "format": "tflite", "precision": "int8",
                     "int8_mode": "full-integer", "scheme": None, "size_bytes": 42504, "path": "runs/x/int8",
                     "accuracy": acc, "latency": lat, "tflite": {"macs": 201696, "io_int8": True}},
        },
        "devices": {"mcu": {"class": "edge", "threads": 1, "threads_profile": 1, "required": True, "passed": True,
                            "deployable": ["int8"], "results": {"int8": result}}},
        "gates": [GateResult("accuracy max_degradation", "int8", 0.0, 0.5, True, "accuracy 0.958 vs merged 0.958").to_dict()],
        "flags": [],
        "projection": {"note": "roofline projection covers decoder LMs only; image classifiers are measured"},
    }


def make_lm_report() -> dict:
    """The quickstart-like report above with what validate adds for LMs: protocol, projection, device latency."""
    report = make_report()
    report["protocol"] = {"eval_examples": 48, "max_new_tokens": 48,
                          "perplexity": {"text": "eval-split", "seq_len": 256, "stride": 256, "max_tokens": 4096,
                                         "windows": 9, "tokens": 2304, "tokenizer": "runs/q/merge"},
                          "agreement_windows": 2,
                          "latency": {"prompt": "set a timer", "new_tokens": 32, "warmup": 1, "repeats": 5,
                                      "batch": 1, "seq_len": 128, "prompt_tokens": 40, "host_cpus": 2}}
    report["projection"] = {"calibrated_on": "int8", "overhead_ms": 1.5, "context_len": 56.0, "host_threads": 2,
                            "host": {"int8": {"projected": {"per_token_ms_p50": 40.0, "decode_tok_s": 25.0,
                                                            "ttft_ms_p50": 800.0, "bound": "memory"},
                                              "measured": {"per_token_ms_p50": 45.0, "decode_tok_s": 22.0,
                                                           "ttft_ms_p50": 900.0},
                                              "error": {"per_token_ms": {"projected": 40.0, "measured": 45.0,
                                                                         "error_ms": -5.0, "abs_error_ms": 5.0,
                                                                         "pct_error": -11.1, "abs_pct_error": 11.1}}}}}
    report["artifacts"]["int8"]["accuracy"]["misses_sample"] = [{"prompt": "p", "expected": "{}", "got": "?"}]
    r = report["devices"]["phone-cpu"]["results"]["int8"]
    r.update(est_ram_mb=300.0, gated_on="projected",
             latency={"measured-host": {"label": "measured-host", "ttft_ms_p50": 900.0, "per_token_ms_p50": 45.0},
                      "projected": {"label": "projected", "per_token_ms_p50": 30.0, "bound": "memory"},
                      "measured-device": None})
    report["devices"]["phone-cpu"].update(threads_profile=4, deployable=[])
    return report


def make_encoder_report() -> dict:
    from test_html import make_encoder_report as make

    return make()


VARIANTS = {"lm": (make_lm_report, LMReport), "encoder": (make_encoder_report, EncoderReport),
            "classifier": (make_classifier_report, ClassifierReport),
            "image": (lambda: make_classifier_report(image=True), ImageClassifierReport)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_report_round_trip_keeps_type_and_keys(variant, tmp_path):
    make, cls = VARIANTS[variant]
    data = make()
    report = ValidationReport.parse(data)
    assert type(report) is cls and report.variant == {"lm": "causal-lm", "image": "image-classifier"}.get(variant,
                                                                                                           variant)
    out = report.write(tmp_path / "report.json")
    assert json.loads(out.read_text()) == data  # exactly the keys validate wrote, nothing added or lost
    loaded = ValidationReport.load(out)
    assert type(loaded) is cls and loaded == report and loaded.to_dict() == data


def test_typed_fields_read_as_attributes():
    lm = ValidationReport.parse(make_lm_report())
    assert lm.artifacts["int8"].accuracy.misses_sample[0].expected == "{}"
    assert lm.devices["phone-cpu"].class_ == "mobile" and lm.devices["phone-cpu"].results["int4"].gates[0].device
    assert lm.devices["phone-cpu"].results["int8"].gated_latency().bound == "memory"
    assert lm.projection.host["int8"].error["per_token_ms"].pct_error == pytest.approx(-11.1)
    assert lm.ordered_artifacts() == ["base", "merged", "int8", "int4"]
    img = ValidationReport.parse(make_classifier_report(image=True))
    assert isinstance(img, ClassifierReport) and isinstance(img, EncoderReport)  # readers ask along the hierarchy
    int8 = img.artifacts["int8"]
    assert int8.accuracy.per_class_f1 == {"diagonal": 0.92, "vertical": 1.0} and int8.latency.step_ms_p50 == 0.058
    mcu = img.devices["mcu"].results["int8"]
    assert mcu.latency.projected.macs == 201696 and mcu.latency.measured_device is None
    assert mcu.tflite["runtime"] == "tflite-micro"


def test_constructed_report_round_trips(tmp_path):
    report = ClassifierReport(kind="encoder", task="classification", recipe="r", passed=False,
                              artifacts={"m": ClassifierArtifact(role="reference", accuracy=ClassifierAccuracy(
                                  accuracy=0.5, max_length=16))})
    loaded = ValidationReport.load(report.write(tmp_path / "report.json"))
    assert type(loaded) is ClassifierReport and loaded == report
    assert loaded.artifacts["m"].accuracy.max_length == 16
    assert json.loads((tmp_path / "report.json").read_text())["schema_version"] == 1


def test_nan_unknown_keys_and_nulls(tmp_path):
    data = make_lm_report()
    data["artifacts"]["int4"]["accuracy"]["perplexity"] = float("nan")
    data["artifacts"]["int4"]["exported_by"] = {"tool": "future edgeft"}  # a key this edgeft does not know
    data["devices"]["edge-tpu"]["results"]["int4"]["warnings"] = None
    out = write_json(tmp_path / "report.json", data)
    written = json.loads(out.read_text())
    assert written["artifacts"]["int4"]["accuracy"]["perplexity"] is None
    assert written["artifacts"]["int4"]["exported_by"] == {"tool": "future edgeft"}
    loaded = ValidationReport.load(out)
    assert loaded.artifacts["int4"].accuracy.perplexity is None
    assert loaded.devices["edge-tpu"].results["int4"].warnings == []


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["artifacts"]["int8"].update(size_bytes="big"),
     "artifacts.int8.size_bytes: Input should be a valid integer, unable to parse string as an integer (got 'big')"),
    (lambda d: d["devices"]["phone-cpu"]["results"]["int4"].update(passed="maybe"),
     "devices.phone-cpu.results.int4.passed: Input should be a valid boolean"),
    (lambda d: d["artifacts"]["base"].update(role="teacher"),
     "artifacts.base.role: 'teacher' is not a valid choice; valid choices: base, reference, artifact"),
    (lambda d: d.update(artifacts=["int8"]), "artifacts: Input should be a valid dictionary"),
    (lambda d: d["gates"][0].pop("passed"), "gates.0.passed: required key missing"),
    (lambda d: d.update(kind="decoder"), "kind: unknown report kind 'decoder'"),
    (lambda d: d.update(kind="encoder", task="detection"), "task: unknown report kind 'encoder' / task 'detection'"),
])
def test_malformed_report_is_one_line_naming_file_and_field(tmp_path, edit, needle):
    data = make_lm_report()
    edit(data)
    f = tmp_path / "report.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        ValidationReport.load(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text, needle", [("{not json", "not a JSON validation report"),
                                          ("[1, 2]", "a validation report is a JSON object, not list")])
def test_report_that_is_not_an_object(tmp_path, text, needle):
    f = tmp_path / "report.json"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        ValidationReport.load(f)
    with pytest.raises(ConfigError, match="no such validation report"):
        ValidationReport.load(tmp_path / "missing.json")


def test_report_schema_is_published(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import cli

    out = tmp_path / "report.schema.json"
    res = CliRunner().invoke(cli, ["recipes", "schema", "--report", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    schema = json.loads(out.read_text())
    assert schema == report_json_schema()
    variants = [ref["$ref"].split("/")[-1] for ref in schema["oneOf"]]
    assert variants == ["LMReport", "EncoderReport", "ClassifierReport", "ImageClassifierReport"]
    defs = schema["$defs"]
    assert defs["EncoderReport"]["properties"]["kind"]["const"] == "encoder"
    assert defs["ImageClassifierReport"]["properties"]["task"]["const"] == "image-classification"
    assert "per_class_f1" in defs["ImageAccuracy"]["properties"]
    assert "measured-host" in defs["DeviceLatency_DecodeLatency_"]["properties"]  # the keys as report.json has them
    assert CliRunner().invoke(cli, ["recipes", "schema", "--report", "--preset"]).exit_code == 2
