"""report.json writing and the summary table (rendered through a recording rich Console)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeft.validate.gates import GateResult
from edgeft.validate.report import print_summary, summary_table, summary_text, write_json

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
