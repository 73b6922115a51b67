"""report.html: self-contained, well-formed, complete; and it renders to a non-trivial PNG in Chromium."""

from __future__ import annotations

import base64
import copy
import importlib.util
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgeft.validate.html import _pareto_frontier, render_html, write_html

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024

ARTIFACTS = ("base", "merged", "onnx-fp32", "int8", "int4")
DEVICES = ("phone-cpu", "pi5", "edge-tpu")


def _lat(ttft, tok_s, per_tok, rss, samples=None):
    lat = {"label": "measured-host", "threads": 2,
           "ttft_ms_p50": ttft, "ttft_ms_p95": None if ttft is None else ttft * 1.1,
           "decode_tok_s": tok_s, "per_token_ms_p50": per_tok,
           "per_token_ms_p95": None if per_tok is None else per_tok * 1.2, "peak_rss_mb": rss}
    if samples is not None:
        lat["samples_ms"] = samples
    return lat


def _art(role, fmt, prec, size_mb, em, ppl, lat, mode=None):
    return {"role": role, "format": fmt, "precision": prec, "int8_mode": mode, "scheme": None,
            "size_bytes": None if size_mb is None else int(size_mb * MB), "path": f"runs/syn/{role}",
            "accuracy": {"exact_match": em, "json_valid": None if em is None else min(1.0, em + 0.02),
                         "perplexity": ppl, "top1_agreement": 0.97, "kl": 1e-11, "n_examples": 48,
                         "misses_sample": [{"prompt": "play <b>queen</b>", "expected": '{"intent":"media"}',
                                            "got": "?"}]},
            "latency": lat}


def _gate(name, art, value, limit, passed, detail, device=None):
    return {"name": name, "artifact": art, "value": value, "limit": limit, "passed": passed, "detail": detail,
            "device": device}


def _res(compatible, passed, gates=(), reasons=(), suggestions=(), warnings=()):
    return {"compatible": compatible, "passed": passed, "gates": list(gates), "reasons": list(reasons),
            "suggestions": list(suggestions), "warnings": list(warnings), "est_ram_mb": 300.0,
            "latency": {"label": "measured-host", "ttft_ms_p50": 50.0}}


def make_report() -> dict:
    """A quickstart-shaped report that fails: int8 erased the fine-tune, int4 misses a TTFT budget on
    the phone, nothing runs on the TPU, some values are missing, and one suggestion carries a URL."""
    ttft_fail = _gate("ttft_ms (measured-host)", "int4", 2100.0, 1500.0, False,
                      "ttft_ms_p50 2100 ms > max 1500 ms on phone-cpu (measured-host)", "phone-cpu")
    tok_ok = _gate("decode_tok_s (measured-host)", "onnx-fp32", 30.0, 10.0, True,
                   "decode_tok_s 30 tok/s >= min 10 tok/s on phone-cpu (measured-host)", "phone-cpu")
    erased = "FINE-TUNE ERASED: int8 exact match 0.06 is within 0.05 of the base model's 0.02"
    return {
        "schema_version": 1,
        "recipe": "synthetic",
        "reference": "merged",
        "passed": False,
        "protocol": {"eval_examples": 48, "max_new_tokens": 48, "agreement_windows": 2,
                     "perplexity": {"text": "eval-split", "seq_len": 256, "windows": 9},
                     "latency": {"prompt": "set a timer", "new_tokens": 32, "repeats": 5, "host_cpus": 2}},
        "artifacts": {
            "base": _art("base", "pytorch", "fp32", 513.0, 0.02, 7.5, None),
            "merged": _art("reference", "pytorch", "fp32", 513.0, 0.96, 5.2, _lat(140.0, 15.5, 64.0, 880.0)),
            "onnx-fp32": _art("artifact", "onnx", "fp32", 514.3, 0.96, 5.2,
                              _lat(62.0, 34.6, 28.9, 864.0, samples=[27.0, 28.5, 28.9, 29.3, 31.0, 35.2])),
            "int8": _art("artifact", "onnx", "int8", 223.2, 0.06, None, _lat(44.7, 62.5, 16.0, None), mode="dynamic"),
            "int4": _art("artifact", "onnx", "int4", None, 0.94, 5.4, _lat(None, None, None, 537.0)),
        },
        "devices": {
            "phone-cpu": {"class": "mobile", "threads": 2, "threads_profile": 4, "required": True, "passed": True,
                          "deployable": ["onnx-fp32"], "results": {
                              "merged": _res(False, False, reasons=["format pytorch is not supported on phone-cpu"],
                                             suggestions=["export to onnx, see https://onnxruntime.ai/docs"]),
                              "onnx-fp32": _res(True, True, gates=[tok_ok]),
                              "int8": _res(True, False),
                              "int4": _res(True, False, gates=[ttft_fail]),
                          }},
            "pi5": {"class": "edge", "threads": 2, "required": True, "passed": True, "results": {
                "onnx-fp32": _res(True, True),
                "int8": None,
            }},
            "edge-tpu": {"class": "tpu", "threads": 2, "required": False, "passed": False, "results": {
                name: _res(False, False, reasons=[f"{name} is not full-integer int8", "dynamic input shapes"],
                           suggestions=["re-quantize with a static full-integer scheme"],
                           warnings=["weights exceed on-chip memory"])
                for name in ("merged", "onnx-fp32", "int8", "int4")
            }},
        },
        "gates": [
            _gate("exact_match max_degradation", "int8", 0.9, 0.05, False, "exact_match 0.06 vs merged 0.96: drop 0.9"),
            _gate("perplexity percent_max_degradation", "int4", 3.8, 15.0, True, "perplexity rise 3.8% <= max 15%"),
            _gate("fine-tune-erased", "int8", 0.06, 0.02, False, erased),
        ],
        "flags": [erased, "int4: top-1 agreement below 0.9"],
    }


def _enc_lat(p50, samples):
    return {"kind": "encoder", "per_inference_ms_p50": p50, "per_inference_ms_p95": p50 * 1.15,
            "samples_ms": samples, "batch": 1, "seq_len": 128, "threads": 2, "warmup": 2, "runs": len(samples),
            "peak_rss_mb": 170.0, "label": "measured-host"}


def _enc_art(role, prec, size_mb, cos, cos_min, lat, mode=None):
    return {"role": role, "kind": "encoder", "format": "onnx" if lat else "pytorch", "precision": prec,
            "int8_mode": mode, "scheme": None if mode is None else f"int8-{mode}", "size_bytes": int(size_mb * MB),
            "path": f"runs/enc/{role}",
            "accuracy": {"exact_match": None, "json_valid": None, "perplexity": None, "top1_agreement": None,
                         "kl": None, "embedding_cosine": cos, "embedding_cosine_min": cos_min, "n_examples": 32},
            "latency": lat}


def make_encoder_report() -> dict:
    """A MiniLM-shaped encoder report (``_validate_encoders``): cosine accuracy, per-inference latency."""
    def dev_res(name, p50):
        host = {"label": "measured-host", "per_inference_ms_p50": p50, "per_inference_ms_p95": p50 * 1.15,
                "peak_rss_mb": 170.0, "threads": 2, "batch": 1, "seq_len": 128}
        gate = _gate("per_inference_ms (measured-host)", name, p50, 20.0, p50 <= 20.0,
                     f"per_inference_ms_p50 {p50} ms <= max 20 ms on phone-cpu (measured-host)", "phone-cpu")
        return {"compatible": True, "reasons": [], "suggestions": [], "warnings": [], "est_ram_mb": None,
                "gates": [gate], "passed": p50 <= 20.0, "gated_on": "measured-host",
                "latency": {"measured-host": host, "projected": None, "measured-device": None}}

    return {
        "schema_version": 1, "recipe": "", "kind": "encoder", "reference": "fp32-torch", "passed": True,
        "protocol": {"eval_examples": 32, "embedding": "mean-pooled last hidden state, L2-normalized",
                     "latency": {"prompt": "set a timer", "new_tokens": 32, "warmup": 2, "repeats": 20, "batch": 1,
                                 "seq_len": 128, "host_cpus": 2}},
        "artifacts": {
            "fp32-torch": _enc_art("reference", "fp32", 86.7, 1.0, 0.9999999, None),
            "onnx-fp32": _enc_art("artifact", "fp32", 86.2, 1.0, 0.9999999,
                                  _enc_lat(25.9, [29.5, 29.3, 26.4, 26.0, 25.3, 40.1, 27.0, 24.8])),
            "int8-weight": _enc_art("artifact", "int8", 57.1, 0.99963, 0.99928,
                                    _enc_lat(17.6, [17.6, 17.7, 18.0, 17.5, 15.4, 17.5, 18.2, 17.8]),
                                    mode="weight"),
            "int8-dynamic": _enc_art("artifact", "int8", 56.0, 0.99231, 0.98104,
                                     _enc_lat(8.0, [9.1, 9.0, 8.6, 7.8, 7.7, 8.0, 8.0, 7.9]), mode="dynamic"),
        },
        "devices": {"phone-cpu": {"class": "mobile", "threads": 2, "threads_profile": 4, "required": True,
                                  "passed": True, "deployable": ["int8-weight", "int8-dynamic"], "results": {
                                      "onnx-fp32": dev_res("onnx-fp32", 25.9),
                                      "int8-weight": dev_res("int8-weight", 17.6),
                                      "int8-dynamic": dev_res("int8-dynamic", 8.0)}}},
        "gates": [_gate("embedding_cosine threshold", n, c, 0.99, True, f"embedding_cosine {c:.3g} >= min 0.99")
                  for n, c in (("onnx-fp32", 1.0), ("int8-weight", 0.99963), ("int8-dynamic", 0.99231))],
        "flags": [],
        "projection": {"note": "roofline projection covers decoder LMs only; encoders are measured"},
    }


class _Checker(HTMLParser):
    """Tag balance and every resource reference of an HTML page."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "srcset", "data", "poster", "action") and v is not None:
                self.refs.append((tag, k, v))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href") and v is not None:
                self.refs.append((tag, k, v))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_self_contained(page: str) -> _Checker:
    assert "http://" not in page and "https://" not in page
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed tags: {checker.stack}"
    for tag in ("script", "link", "iframe", "object", "embed", "base", "frame"):
        assert tag not in checker.tags, f"<{tag}> in a self-contained page"
    for tag, attr, value in checker.refs:
        assert value.startswith(("data:", "#")), f"<{tag} {attr}={value!r}> points outside the page"
    for m in re.finditer(r"<img\b[^>]*\bsrc\s*=\s*[\"']?([^\"' >]*)", page, re.I):
        assert m.group(1).startswith("data:"), m.group(0)
    for m in re.finditer(r"url\(\s*['\"]?([^'\")]*)", page, re.I):
        assert m.group(1).startswith("data:"), m.group(0)
    assert "@import" not in page and "@font-face" not in page

    svgs = re.findall(r"<svg\b.*?</svg>", page, re.S)
    for svg in svgs:
        root = ET.fromstring(svg)  # raises on malformed XML
        assert root.tag.endswith("svg")
        assert root.get("width") and root.get("height") and root.get("viewBox")
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(b64, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    return checker


def test_html_self_contained_well_formed_and_complete(tmp_path):
    report = make_report()
    out = write_html(tmp_path / "validate" / "report.html", report)
    assert out == tmp_path / "validate" / "report.html" and out.is_file()
    assert not list(out.parent.glob(".report.html.*"))  # atomic write left no temp file
    page = out.read_text(encoding="utf-8")
    checker = _check_self_contained(page)
    text = " ".join(checker.text)

    assert len(re.findall(r"<svg\b", page)) >= 4  # pareto, tok/s, per-token latency, TTFT
    for name in ARTIFACTS + DEVICES:
        assert name in text, name
    assert "synthetic" in text and "FAIL" in text
    assert "FINE-TUNE ERASED" in text and 'class="flag erased"' in page
    for label in ("measured-host", "projected", "measured-device"):
        assert label in text
    # every gate and every incompatibility reason, in full
    assert "ttft_ms_p50 2100 ms > max 1500 ms on phone-cpu (measured-host)" in text
    assert "exact_match 0.06 vs merged 0.96: drop 0.9" in text
    assert "format pytorch is not supported on phone-cpu" in text
    assert "int4 is not full-integer int8" in text and "re-quantize with a static full-integer scheme" in text
    # the URL in a suggestion stays readable but is not a reference
    assert "onnxruntime.ai/docs" in text and "https:" in text
    assert 'title="' in page  # matrix cells carry their reasons as a tooltip
    assert "median" in page  # samples_ms drawn as a distribution
    assert "<b>queen</b>" not in page  # report text is escaped


def test_html_handles_missing_and_null_values():
    for report in ({}, {"artifacts": None, "devices": None, "gates": None, "flags": None, "passed": None},
                   {"artifacts": {"x": None}, "devices": {"d": None}, "gates": [None], "flags": [None]}):
        page = render_html(report)
        _check_self_contained(page)
        assert "UNKNOWN" in page

    report = make_report()
    for a in report["artifacts"].values():
        a["accuracy"] = {k: None for k in a["accuracy"]}
        a["latency"] = None
        a["size_bytes"] = None
    report["protocol"] = None
    report["devices"]["pi5"]["results"] = None
    page = render_html(report)
    _check_self_contained(page)
    for name in ARTIFACTS:
        assert name in page


def test_html_encoder_report():
    report = make_encoder_report()
    page = render_html(report)
    checker = _check_self_contained(page)
    text = " ".join(checker.text)

    # title: no "?" for an empty recipe
    assert "<title>edgeft validate</title>" in page and "<h1>edgeft validate</h1>" in page
    assert "edgeft validate: ?" not in page
    # encoder columns, not LM ones
    for col in ("embedding cosine (mean)", "embedding cosine (min)", "per-inference p50 / p95 ms (batch 1 × seq 128)",
                "peak RAM MB", "latency label"):
        assert col in text, col
    for col in ("exact match (Δ)", "perplexity (Δ%)", "top-1 agr.", "decode tok/s", "TTFT p50 / p95 ms"):
        assert col not in text, col
    assert "0.9996" in text and "0.9923" in text and "0.9810" in text  # cosines keep their 4 decimals
    assert "25.9 / 29.8" in text
    # plots: cosine-vs-size Pareto on a zoomed y axis and the per-inference distribution, no LM plots
    assert len(re.findall(r"<svg\b", page)) == 2
    assert "Embedding cosine vs size" in text and "Per-inference latency" in text
    for title in ("Decode throughput", "Per-token decode latency", "Time to first token", "Exact match vs size"):
        assert title not in text, title
    assert "0.980" in text and "not 0" in text  # y axis from min(cosine) - 0.01, said so in the caption
    assert "batch 1 × seq 128" in text and "8 timed repeats after 2 warm-up runs" in text
    assert "max 20 ms: phone-cpu" in text  # the per-inference budget drawn on the latency plot
    # protocol: what the cosine is, perplexity not applicable, LM-only latency settings left out
    assert "mean-pooled last hidden state, L2-normalized" in text and "Embedding cosine: each eval text" in text
    assert "Does not apply to encoders" in text
    assert "new_tokens" not in text and "set a timer" not in text
    # the projection note
    assert "roofline projection covers decoder LMs only; encoders are measured" in text
    # gates keep enough decimals to tell 0.9996 from 1, and the device budget gates are listed in full
    assert '<td class="num">0.9996</td><td class="num">0.9900</td>' in page
    assert "per_inference_ms_p50 17.6 ms <= max 20 ms on phone-cpu (measured-host)" in text

    # missing latency and accuracy values still render
    for a in report["artifacts"].values():
        a["latency"] = None
        a["accuracy"] = {k: None for k in a["accuracy"]}
    report["protocol"] = None
    report["projection"] = None
    page = render_html(report)
    _check_self_contained(page)
    assert "Embedding cosine vs size" in page and "Per-inference latency" in page


def test_lm_page_title_and_no_projection_card():
    report = make_report()
    page = render_html(report)
    assert "<title>edgeft validate: synthetic</title>" in page
    assert "<h3>Projection</h3>" not in page and "Embedding cosine" not in page
    report["recipe"] = None
    assert "<title>edgeft validate</title>" in render_html(report)


def test_pareto_frontier():
    pts = [("a", 500.0, 0.96), ("b", 500.0, 0.96), ("c", 220.0, 0.95), ("d", 170.0, 0.95), ("e", 100.0, 0.1),
           ("f", 600.0, 0.97)]
    assert [p[0] for p in _pareto_frontier(pts)] == ["e", "d", "a", "f"]
    assert _pareto_frontier([]) == []


# --------------------------------------------------------------------------- Chromium render


def _load_render_script():
    spec = importlib.util.spec_from_file_location("render_report", REPO / "scripts" / "render_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png_rows(data: bytes, max_rows: int) -> tuple[int, int, list[bytes], int]:
    """(width, height, the first ``max_rows`` unfiltered rows, bytes per pixel) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert ihdr is not None and idat, "PNG without IHDR or IDAT"
    width, height, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {ihdr}"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    n = min(height, max_rows)
    raw = zlib.decompressobj().decompress(b"".join(idat), n * (stride + 1))
    rows, prev = [], bytearray(stride)
    for r in range(n):
        ftype, line = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def test_render_png_with_chromium(tmp_path):
    render = _load_render_script()
    if render.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): cannot render report.html to PNG")
    html_path = write_html(tmp_path / "report.html", make_report())
    png = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "render_report.py"), str(html_path), str(png)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = png.read_bytes()
    assert len(data) > 30_000, f"PNG only {len(data)} bytes"

    # the top of the page: title and the FAIL banner; decode it and count colours
    width, height, rows, bpp = _png_rows(data, 160)
    assert (width, height) == (1400, 2400)
    counts: dict[bytes, int] = {}
    for line in rows:
        for i in range(0, len(line), bpp * 2):  # every other pixel is plenty
            px = line[i:i + 3]
            counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    assert len(counts) > 20, f"only {len(counts)} colours: blank or broken page"
    assert max(counts.values()) < 0.97 * total, "the page is (nearly) a single colour"
    red = sum(n for px, n in counts.items() if px[0] > 180 and px[1] < 90 and px[2] < 90)
    assert red > 50, "the red FAIL banner is not visible"


def test_render_script_fails_cleanly_without_input(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "render_report.py"), str(tmp_path / "missing.html"),
                           str(tmp_path / "out.png")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "render_report:" in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_synthetic_report_is_not_mutated():
    report = make_report()
    before = copy.deepcopy(report)
    render_html(report)
    assert report == before


def test_html_shows_the_auto_plan(tmp_path):
    """An ``auto`` artifact's plan (quant_plan.json) reaches the report entry and its HTML details."""
    import json

    from edgeft.validate import Artifact
    from edgeft.validate.common import add_quant_plan

    plan = {"precision_counts": {"int4/b32/asym": 200, "int8/b32": 10, "fp32": 0},
            "budget": {"max_ppl_increase_pct": 5.0}, "reached": {"perplexity_increase_pct": 4.2}, "layers": {}}
    (tmp_path / "quant_plan.json").write_text(json.dumps(plan))
    info: dict = {}
    add_quant_plan(info, Artifact("int4-auto", tmp_path, "onnx", precision="int4"))
    assert info["quant_plan"]["precision_counts"] == plan["precision_counts"]
    report = make_report()
    report["artifacts"]["int4"]["quant_plan"] = info["quant_plan"]
    page = render_html(report)
    _check_self_contained(page)
    assert "int4/b32/asym x200, int8/b32 x10 (calibration check +4.20% perplexity)" in page
    add_quant_plan(info := {}, Artifact("int8", tmp_path / "none", "onnx", precision="int8"))
    assert "quant_plan" not in info
