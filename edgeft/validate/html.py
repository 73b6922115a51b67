"""``report.html``: the validation report (``report.json``, see :mod:`edgeft.validate.report`) as one page.

The page is self-contained: inline CSS, inline SVG plots, no scripts, no external fonts, images
or links, so it opens the same from a CI artifact, an e-mail attachment or an air-gapped box.

Sections: header (recipe, overall verdict, flags, protocol and how each figure was obtained),
device x artifact matrix, artifact table, plots (exact match vs size with the Pareto frontier,
per-token and first-token latency, decode tok/s), then every gate and every incompatibility in
full. Any value may be missing or null; it shows as a dash.

Encoder reports (``report["kind"] == "encoder"``) get their own artifact columns (embedding cosine
vs the reference, per-inference latency at batch x sequence length), an embedding-cosine-vs-size
plot and a per-inference latency plot instead of the generation ones, and protocol cards that say
what the cosine measures; ``projection.note``, when present, is shown as a card.

The plots are hand-written SVG rather than matplotlib: they are a few rectangles, lines and
labels, matplotlib would be a new heavy dependency (and seconds of import and font-cache time
on a 2-core CI box) for that, and SVG keeps the text crisp, selectable and searchable in the page.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from edgeft.artifacts import kind_of_report
from edgeft.fileio import atomic_write_text
from edgeft.validate.report import _num, _ordered_artifacts

__all__ = ["escape", "render_html", "render_page", "write_html"]

MB = 1024 * 1024
_DASH = "–"

LABELS = {
    "measured-host": "timed on the machine that ran validate, with the thread count the device uses "
                     "(capped at this host's CPUs): a stand-in for the device, not a run on it.",
    "projected": "estimated for the device from a host measurement and the device profile; "
                 "nothing ran on the device.",
    "measured-device": "timed on the target device itself.",
}

_ROLE_COLORS = {"base": "#8c959f", "reference": "#0969da", "artifact": "#bc4c00"}
_PASS, _FAIL, _NA, _WARN = "#1a7f37", "#cf222e", "#6e7781", "#9a6700"


# --------------------------------------------------------------------------- small helpers


def _esc(value: Any) -> str:
    """HTML/XML-escaped text; ``://`` becomes ``&#58;//`` so no URL-looking string is ever in the file."""
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


def _d(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else []


def _fmt(v: Any, digits: Optional[int] = None) -> str:
    """A number for a table cell: ``digits`` decimals, else 3 significant-ish; tiny values in e-notation."""
    f = _num(v)
    if f is None:
        return _DASH
    if digits is not None:
        return f"{f:.{digits}f}"
    a = abs(f)
    if a == 0:
        return "0"
    if a < 1e-3:
        return f"{f:.1e}"
    if a >= 1000:
        text = f"{f:.0f}"
    elif a >= 100:
        text = f"{f:.1f}"
    else:
        text = f"{f:.3f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _mb(size_bytes: Any) -> Optional[float]:
    f = _num(size_bytes)
    return None if f is None else f / MB


def _verdict(passed: Any) -> tuple[str, str]:
    """(text, css class) of a pass/fail flag that may be missing."""
    if passed is True:
        return "PASS", "pass"
    if passed is False:
        return "FAIL", "fail"
    return "?", "unknown"


def _artifact_names(report: dict) -> list[str]:
    """Artifacts in display order, then any name that only a device result mentions."""
    names = _ordered_artifacts(report) if isinstance(report.get("artifacts"), dict) else []
    for d in _d(report.get("devices")).values():
        for n in _d(_d(d).get("results")):
            if n not in names:
                names.append(n)
    return names


def _gate_short(name: Any) -> str:
    return str(name or "?").split(" (")[0]


def _is_encoder(report: dict) -> bool:
    return kind_of_report(report) != "causal-lm"


def _is_classifier(report: dict) -> bool:
    return kind_of_report(report) in ("classifier", "image-classifier")


def _title(report: dict) -> str:
    recipe = report.get("recipe")
    return f"edgeft validate: {recipe}" if recipe else "edgeft validate"


def _batch_seq(report: dict) -> tuple[Any, Any]:
    """(batch, seq_len) of the encoder latency protocol, else of the first artifact that recorded them."""
    lat = _d(_d(report.get("protocol")).get("latency"))
    batch, seq = lat.get("batch"), lat.get("seq_len")
    for a in _d(report.get("artifacts")).values():
        al = _d(_d(a).get("latency"))
        batch = batch if batch is not None else al.get("batch")
        seq = seq if seq is not None else al.get("seq_len")
    return batch, seq


def _shape_text(batch: Any, seq: Any) -> str:
    """``batch 1 × seq 128`` (parts that are missing left out)."""
    parts = ([f"batch {batch}"] if batch is not None else []) + ([f"seq {seq}"] if seq is not None else [])
    return " × ".join(parts)


# --------------------------------------------------------------------------- CSS

_CSS = """
:root { --pass:#1a7f37; --pass-bg:#dafbe1; --fail:#cf222e; --fail-bg:#ffebe9; --na:#57606a; --na-bg:#eaeef2;
        --warn:#9a6700; --warn-bg:#fff8c5; --ink:#1f2328; --muted:#57606a; --line:#d0d7de; --head:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 "DejaVu Sans", "Liberation Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 20px 28px 40px; max-width: 1344px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 10px; }
h2 { font-size: 18px; margin: 26px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
code, .mono { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
.banner { display: flex; align-items: center; gap: 16px; padding: 10px 16px; border-radius: 6px; margin: 6px 0 10px;
          border: 2px solid; }
.banner .word { font-size: 28px; font-weight: 800; letter-spacing: 1px; }
.banner.pass { background: var(--pass-bg); border-color: var(--pass); color: var(--pass); }
.banner.fail { background: var(--fail-bg); border-color: var(--fail); color: var(--fail); }
.banner.unknown { background: var(--warn-bg); border-color: var(--warn); color: var(--warn); }
.banner .why { color: var(--ink); }
.flag { padding: 6px 12px; border-radius: 4px; margin: 4px 0; border-left: 5px solid var(--warn);
        background: var(--warn-bg); }
.flag.erased { border-left-color: var(--fail); background: var(--fail-bg); color: var(--fail); font-weight: 700; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: #fff; }
.card h3 { margin: 0 0 4px; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 1px 10px; margin: 0; }
.card dt { color: var(--muted); }
.card dd { margin: 0; overflow-wrap: anywhere; }
.card p { margin: 3px 0; }
.tag { display: inline-block; padding: 0 6px; border-radius: 10px; font-size: 12px; border: 1px solid var(--line);
       background: var(--head); white-space: nowrap; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.full { width: 100%; }
table.gates { table-layout: fixed; }
table.gates td { overflow-wrap: anywhere; }
td.wrap { overflow-wrap: anywhere; }
td.nowrap { white-space: nowrap; }
.matrix td.cell { text-align: center; min-width: 150px; }
.matrix td.cell .st { font-weight: 800; font-size: 15px; }
.matrix td.cell .sub { font-size: 12px; }
.cell.pass { background: var(--pass-bg); color: var(--pass); }
.cell.fail { background: var(--fail-bg); color: var(--fail); }
.cell.na { background: var(--na-bg); color: var(--na); }
.cell.none { color: var(--muted); }
.cell.unknown { background: var(--warn-bg); color: var(--warn); }
.res { font-weight: 700; }
.res.pass { color: var(--pass); }
.res.fail { color: var(--fail); }
.res.na { color: var(--na); }
.res.unknown { color: var(--warn); }
.worse { color: var(--fail); }
.better { color: var(--pass); }
.same { color: var(--muted); }
tr.bad td:first-child { border-left: 4px solid var(--fail); }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: "DejaVu Sans", "Liberation Sans", Helvetica, Arial, sans-serif; }
.incompat { border: 1px solid var(--line); border-left: 5px solid var(--na); border-radius: 4px; padding: 6px 12px;
            margin: 6px 0; }
.incompat ol, .incompat ul { margin: 2px 0 4px; padding-left: 22px; }
.incompat li { overflow-wrap: anywhere; }
details > summary { cursor: pointer; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 2px 0; }
"""


# --------------------------------------------------------------------------- header


def _overall_reasons(report: dict) -> list[str]:
    why = []
    missing = [n for n, d in _d(report.get("devices")).items()
               if _d(d).get("required") and _d(d).get("passed") is False]
    if missing:
        why.append("required devices without a passing artifact: " + ", ".join(missing))
    failed = sorted({str(_d(g).get("artifact", "?")) for g in _l(report.get("gates")) if not _d(g).get("passed")})
    if failed:
        why.append("accuracy gates failed for: " + ", ".join(failed))
    return why


def _header(report: dict) -> str:
    word, cls = _verdict(report.get("passed"))
    if cls == "unknown":
        word = "UNKNOWN"
    devs = _d(report.get("devices"))
    req = [n for n, d in devs.items() if _d(d).get("required")]
    if cls == "pass":
        why = "every required device has a compatible artifact passing all its gates, and every accuracy gate passed"
        if req:
            why += f" (required: {', '.join(req)})"
    elif cls == "fail":
        why = "; ".join(_overall_reasons(report)) or "see the gates below"
    else:
        why = "report.json has no overall verdict"
    out = [f"<h1>{_esc(_title(report))}</h1>",
           f'<div class="banner {cls}"><span class="word">{word}</span><span class="why">{_esc(why)}</span></div>']
    meta = [f"reference: <b>{_esc(report.get('reference') or 'merged')}</b>",
            f"{len(_d(report.get('artifacts')))} artifacts",
            f"{len(devs)} device profiles"]
    if _is_encoder(report):
        meta.append("encoder")
    if report.get("schema_version") is not None:
        meta.append(f"schema {_esc(report.get('schema_version'))}")
    out.append(f'<p class="muted">{" · ".join(meta)}</p>')
    flags = _l(report.get("flags"))
    if flags:
        out.append("<h2>Flags</h2>")
        for f in flags:
            erased = "ERASED" in str(f).upper()
            out.append(f'<div class="flag{" erased" if erased else ""}">{_esc(f)}</div>')
    out.append(_protocol(report))
    return "\n".join(out)


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    items = [f"<dt>{_esc(k)}</dt><dd>{_esc(_DASH if v is None else v)}</dd>" for k, v in rows]
    return "<dl>" + "".join(items) + "</dl>" if items else '<p class="muted">not recorded</p>'


def _label_counts(report: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in _d(report.get("artifacts")).values():
        lab = _d(_d(a).get("latency")).get("label")
        if lab:
            counts[str(lab)] = counts.get(str(lab), 0) + 1
    for d in _d(report.get("devices")).values():
        for r in _d(_d(d).get("results")).values():
            lat = _d(_d(r).get("latency"))
            if "label" in lat:  # one latency figure per device result
                labs = [lat.get("label")]
            else:  # measured-host / projected / measured-device side by side
                labs = [k for k, v in lat.items() if isinstance(v, dict) and v]
            for lab in labs:
                if lab:
                    counts[str(lab)] = counts.get(str(lab), 0) + 1
    return counts


def _protocol(report: dict) -> str:
    p = _d(report.get("protocol"))
    ppl, lat = _d(p.get("perplexity")), _d(p.get("latency"))
    acc_rows = [("eval examples", p.get("eval_examples")), ("max new tokens", p.get("max_new_tokens")),
                ("agreement windows", p.get("agreement_windows"))]
    acc_rows += [(k, v) for k, v in p.items()
                 if k not in ("eval_examples", "max_new_tokens", "agreement_windows", "perplexity", "latency")
                 and not isinstance(v, (dict, list))]
    if not p:
        acc_rows = []
    cards = _encoder_protocol_cards(p) if _is_encoder(report) else [
        '<div class="card"><h3>Accuracy</h3>'
        '<p class="small muted">Exact match and JSON validity: greedy generation on the eval split. '
        "Top-1 agreement and KL: next-token distributions vs the reference on the agreement windows.</p>"
        + _kv(acc_rows) + "</div>",
        '<div class="card"><h3>Perplexity</h3>'
        '<p class="small muted">Same text, windows and tokenizer for every artifact.</p>'
        + _kv((k, v) for k, v in ppl.items() if not isinstance(v, (dict, list))) + "</div>",
        '<div class="card"><h3>Latency</h3>'
        '<p class="small muted">Time to first token (TTFT), per-token decode time and peak RSS, '
        "fresh process per artifact, after warm-up runs.</p>"
        + _kv((k, v) for k, v in lat.items() if not isinstance(v, (dict, list))) + "</div>",
    ]
    note = _d(report.get("projection")).get("note")
    if note:
        cards.append('<div class="card"><h3>Projection</h3>'
                     f'<p>{_esc(note)}</p></div>')
    counts = _label_counts(report)
    rows = []
    for lab, text in LABELS.items():
        n = counts.get(lab, 0)
        used = f'<span class="tag">{n} in this report</span>' if n else '<span class="tag">not used here</span>'
        rows.append(f"<p><b>{_esc(lab)}</b> {used}<br>{_esc(text)}</p>")
    for lab, n in counts.items():
        if lab not in LABELS:
            rows.append(f'<p><b>{_esc(lab)}</b> <span class="tag">{n} in this report</span><br>unrecognised label.</p>')
    cards.append('<div class="card"><h3>How each figure was obtained</h3>'
                 '<p class="small">Accuracy figures are computed on this host by running each artifact; '
                 "they do not depend on the device. Latency and RAM figures carry one of these labels:</p>"
                 + "".join(rows) + "</div>")
    return "<h2>Protocol</h2>\n" + '<div class="cards">' + "\n".join(cards) + "</div>"


_LM_ONLY_LATENCY_KEYS = ("prompt", "new_tokens")


def _encoder_protocol_cards(p: dict) -> list[str]:
    """Accuracy, perplexity (not applicable) and latency cards of an encoder report's protocol."""
    lat = _d(p.get("latency"))
    acc_rows = [("eval examples", p.get("eval_examples"))] if p else []
    acc_rows += [(k, v) for k, v in p.items()
                 if k not in ("eval_examples", "perplexity", "latency") and not isinstance(v, (dict, list))]
    what = ('<p class="small muted">Classification: each artifact labels every eval text (argmax of its '
            "logits); accuracy and macro-F1 against the gold labels, label agreement and logit differences "
            "against the reference.</p>") if "classification" in p else (
        '<p class="small muted">Embedding cosine: each eval text is embedded by the artifact and by the '
        "reference (mean-pooled last hidden state, L2-normalized); the cosine of the two embeddings is "
        "averaged over the examples (mean) and its worst example is reported (min). 1.0 means the artifact "
        "reproduces the reference's embeddings.</p>")
    return [
        '<div class="card"><h3>Accuracy</h3>' + what
        + _kv(acc_rows) + "</div>",
        '<div class="card"><h3>Perplexity</h3>'
        '<p class="small muted">Does not apply to encoders: they predict no next token. Exact match, JSON '
        "validity, top-1 agreement and KL do not apply either.</p></div>",
        '<div class="card"><h3>Latency</h3>'
        '<p class="small muted">Per-inference time: one forward pass over a batch of fixed-length inputs '
        "(batch × seq_len tokens), fresh process per artifact, after warm-up runs; p50/p95 over the timed "
        "repeats, and peak RSS.</p>"
        + _kv((k, v) for k, v in lat.items()
              if k not in _LM_ONLY_LATENCY_KEYS and not isinstance(v, (dict, list))) + "</div>",
    ]


# --------------------------------------------------------------------------- matrix


def _cell(dev: str, art: str, r: Any) -> tuple[str, str, str, str]:
    """(css class, status word, sub line, tooltip) of one device x artifact cell."""
    if not isinstance(r, dict):
        return "none", _DASH, "not checked", f"{dev} × {art}: not checked"
    gates = [_d(g) for g in _l(r.get("gates"))]
    failed = [g for g in gates if not g.get("passed")]
    warnings = _l(r.get("warnings"))
    tip = [f"{dev} × {art}"]
    if r.get("compatible") is False:
        reasons = _l(r.get("reasons")) or ["incompatible"]
        cls, word = "na", "incompatible"
        sub = f"{len(reasons)} reason{'s' if len(reasons) != 1 else ''}"
        tip.append("incompatible:")
        tip += [f"- {x}" for x in reasons]
        sugg = _l(r.get("suggestions"))
        if sugg:
            tip.append("suggestions:")
            tip += [f"- {x}" for x in sugg]
    else:
        word, cls = _verdict(r.get("passed"))
        if cls == "pass":
            sub = f"{len(gates)}/{len(gates)} gates" if gates else "no budgets set"
        elif cls == "fail":
            sub = ", ".join(_gate_short(g.get("name")) for g in failed) if failed else "accuracy gates"
        else:
            sub = ""
        tip.append(word)
        tip += [f"{'PASS' if g.get('passed') else 'FAIL'} {g.get('name', '?')}: {g.get('detail', '')}" for g in gates]
        if cls == "fail" and not failed:
            tip.append("budgets pass; the artifact failed an accuracy gate")
    if warnings:
        sub += f" · {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
        tip.append("warnings:")
        tip += [f"- {w}" for w in warnings]
    return cls, word, sub, "\n".join(tip)


def _matrix(report: dict) -> str:
    devs = _d(report.get("devices"))
    names = _artifact_names(report)
    if not devs:
        return '<h2>Devices × artifacts</h2><p class="muted">No device profiles in this report.</p>'
    head = ["<th>artifact</th>"]
    for dn, d in devs.items():
        d = _d(d)
        word, cls = _verdict(d.get("passed"))
        req = "required" if d.get("required") else "optional"
        threads = d.get("threads")
        tp = d.get("threads_profile")
        th = f"{threads} threads" if threads is not None else ""
        if tp is not None and tp != threads:
            th += f" (profile {tp})"
        head.append(f'<th><div>{_esc(dn)}</div><div class="small muted">{_esc(d.get("class") or "?")} · '
                    f'{_esc(th)} · {req}</div><div class="res {cls}">device {word}</div></th>')
    rows = []
    for n in names:
        role = _d(_d(report.get("artifacts")).get(n)).get("role")
        cells = [f'<th>{_esc(n)}{" <span class=tag>" + _esc(role) + "</span>" if role and role != "artifact" else ""}'
                 "</th>"]
        for dn, d in devs.items():
            cls, word, sub, tip = _cell(dn, n, _d(_d(d).get("results")).get(n))
            cells.append(f'<td class="cell {cls}" title="{_esc(tip)}"><div class="st">{_esc(word)}</div>'
                         f'<div class="sub">{_esc(sub)}</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<h2>Devices × artifacts</h2>"
            '<p class="small muted">PASS: compatible and every budget gate passes (and the artifact passes its '
            "accuracy gates). FAIL: compatible but a gate fails. incompatible: cannot run on the device (reasons "
            "and fixes in the tooltip and under <i>Incompatibilities</i>). –: not checked (e.g. the base model).</p>"
            f'<table class="matrix"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


# --------------------------------------------------------------------------- artifact table


def _delta(value: Any, ref: Any, *, percent: bool, higher_is_better: bool) -> str:
    v, r = _num(value), _num(ref)
    if v is None or r is None:
        return ""
    if percent:
        if r == 0:
            return ""
        d = 100.0 * (v - r) / abs(r)
        text = f"{d:+.1f}%"
        tiny = abs(d) < 0.05
    else:
        d = v - r
        text = f"{d:+.3f}"
        tiny = abs(d) < 0.0005
    cls = "same" if tiny else ("better" if (d > 0) == higher_is_better else "worse")
    return f' <span class="small {cls}">({_esc(text)})</span>'


def _failed_acc(report: dict) -> dict[str, list[str]]:
    """Artifact -> short names of its failed accuracy gates."""
    out: dict[str, list[str]] = {}
    for g in _l(report.get("gates")):
        g = _d(g)
        if not g.get("passed"):
            out.setdefault(str(g.get("artifact")), []).append(_gate_short(g.get("name")))
    return out


def _name_cell(n: str, a: dict, is_ref: bool, bad: Optional[list[str]]) -> str:
    role = a.get("role")
    cell = f"<b>{_esc(n)}</b>" if is_ref else _esc(n)
    if role and role != "artifact":
        cell += f' <span class="tag">{_esc(role)}</span>'
    if bad:
        cell += f'<div class="small worse">failed: {_esc(", ".join(bad))}</div>'
    return cell


_ROW_LATENCY_NOTE = ("Latency on the artifact's own row is at the host's thread count; per-device figures are in "
                     "the device gates.")


def _artifact_section(caption_html: str, head: list, rows: list[str]) -> str:
    """The "Artifacts" heading, a caption (already escaped HTML) and the table; shared by LM and encoder pages."""
    if not rows:
        return '<h2>Artifacts</h2><p class="muted">No artifacts in this report.</p>'
    return ("<h2>Artifacts</h2>"
            f'<p class="small muted">{caption_html}</p>'
            '<table class="full"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _encoder_artifact_table(report: dict) -> str:
    arts = _d(report.get("artifacts"))
    ref_name = report.get("reference") or "?"
    failed_acc = _failed_acc(report)
    batch, seq = _batch_seq(report)
    shape = _shape_text(batch, seq)
    cls = _is_classifier(report)  # classifiers: accuracy and label agreement in place of the two cosine columns
    metric_cols = (("accuracy", "accuracy", 4), ("label_agreement", "label agreement", 4)) if cls else (
        ("embedding_cosine", "embedding cosine (mean)", 4), ("embedding_cosine_min", "embedding cosine (min)", 4))
    head = ("artifact", "format / precision", "size MB", *(h for _, h, _ in metric_cols),
            "per-inference p50 / p95 ms" + (f" ({shape})" if shape else ""), "peak RAM MB", "latency label")
    rows = []
    for n in _ordered_artifacts(report) if arts else []:
        a = _d(arts.get(n))
        acc, lat = _d(a.get("accuracy")), _d(a.get("latency"))
        fmt = f"{a.get('format') or '?'} / {a.get('precision') or '?'}"
        extra = " ".join(str(x) for x in (a.get("int8_mode"), a.get("scheme")) if x)
        bad = failed_acc.get(n)
        cos_cls = " worse" if bad and any(("accuracy" if cls else "cosine") in b for b in bad) else ""
        per_inf = (f"{_fmt(lat.get('per_inference_ms_p50'), 1)} / {_fmt(lat.get('per_inference_ms_p95'), 1)}"
                   if lat else _DASH)
        own = _shape_text(lat.get("batch"), lat.get("seq_len"))
        if lat and own and own != shape:  # this artifact was timed at another shape
            per_inf += f'<div class="small">{_esc(own)}</div>'
        cells = [
            f'<td title="{_esc(a.get("path") or "")}">{_name_cell(n, a, n == ref_name, bad)}</td>',
            f'<td>{_esc(fmt)}{"<div class=small>" + _esc(extra) + "</div>" if extra else ""}</td>',
            f'<td class="num">{_fmt(_mb(a.get("size_bytes")), 1)}</td>',
            f'<td class="num{cos_cls}">{_fmt(acc.get(metric_cols[0][0]), 4)}</td>',
            f'<td class="num">{_fmt(acc.get(metric_cols[1][0]), 4)}</td>',
            f'<td class="num">{per_inf}</td>',
            f'<td class="num">{_fmt(lat.get("peak_rss_mb"), 0)}</td>',
            f'<td class="nowrap">{_esc(lat.get("label") or _DASH)}</td>',
        ]
        rows.append(f'<tr{" class=bad" if bad else ""}>' + "".join(cells) + "</tr>")
    if cls:
        caption = (f"Accuracy on the labelled eval split, and agreement of predicted labels with the reference "
                   f"<b>{_esc(ref_name)}</b>. ")
    else:
        caption = (f'Embedding cosine vs the reference <b>{_esc(ref_name)}</b> over the eval '
                   "texts: the mean, and the worst single example (min); 1.0 is identical. ")
    return _artifact_section(caption + _ROW_LATENCY_NOTE, head, rows)


def _artifact_table(report: dict) -> str:
    if _is_encoder(report):
        return _encoder_artifact_table(report)
    arts = _d(report.get("artifacts"))
    ref_name = report.get("reference") or "merged"
    ref_acc = _d(_d(arts.get(ref_name)).get("accuracy"))
    failed_acc = {str(_d(g).get("artifact")): [] for g in _l(report.get("gates")) if not _d(g).get("passed")}
    for g in _l(report.get("gates")):
        g = _d(g)
        if not g.get("passed"):
            failed_acc[str(g.get("artifact"))].append(_gate_short(g.get("name")))
    general = any("perplexity_general" in _d(_d(a).get("accuracy")) for a in arts.values())
    head = ("artifact", "format / precision", "size MB", "exact match (Δ)", "JSON valid", "perplexity (Δ%)",
            *(("general-text perplexity (Δ%)",) if general else ()),
            "top-1 agr.", "KL", "decode tok/s", "TTFT p50 / p95 ms", "peak RAM MB", "latency label")
    rows = []
    for n in _ordered_artifacts(report) if arts else []:
        a = _d(arts.get(n))
        acc, lat = _d(a.get("accuracy")), _d(a.get("latency"))
        is_ref = n == ref_name
        fmt = f"{a.get('format') or '?'} / {a.get('precision') or '?'}"
        extra = " ".join(str(x) for x in (a.get("int8_mode"), a.get("scheme")) if x)
        bad = failed_acc.get(n)
        em_cls = ' worse' if bad and any("exact_match" in b or "erased" in b for b in bad) else ""
        ppl_cls = ' worse' if bad and any(b.startswith("perplexity") and "general" not in b for b in bad) else ""
        gen_cls = ' worse' if bad and any("perplexity_general" in b for b in bad) else ""
        role = a.get("role")
        name_cell = f"<b>{_esc(n)}</b>" if is_ref else _esc(n)
        if role and role != "artifact":
            name_cell += f' <span class="tag">{_esc(role)}</span>'
        if bad:
            name_cell += f'<div class="small worse">failed: {_esc(", ".join(bad))}</div>'
        ttft = f"{_fmt(lat.get('ttft_ms_p50'), 1)} / {_fmt(lat.get('ttft_ms_p95'), 1)}" if lat else _DASH
        em_delta = "" if is_ref else _delta(acc.get("exact_match"), ref_acc.get("exact_match"), percent=False,
                                            higher_is_better=True)
        ppl_delta = "" if is_ref else _delta(acc.get("perplexity"), ref_acc.get("perplexity"), percent=True,
                                             higher_is_better=False)
        cells = [
            f'<td title="{_esc(a.get("path") or "")}">{name_cell}</td>',
            f'<td>{_esc(fmt)}{"<div class=small>" + _esc(extra) + "</div>" if extra else ""}</td>',
            f'<td class="num">{_fmt(_mb(a.get("size_bytes")), 1)}</td>',
            f'<td class="num{em_cls}">{_fmt(acc.get("exact_match"))}'
            f'{em_delta}</td>',
            f'<td class="num">{_fmt(acc.get("json_valid"))}</td>',
            f'<td class="num{ppl_cls}">{_fmt(acc.get("perplexity"))}'
            f'{ppl_delta}</td>',
            *([f'<td class="num{gen_cls}">{_fmt(acc.get("perplexity_general"))}'
               + ("" if is_ref else _delta(acc.get("perplexity_general"), ref_acc.get("perplexity_general"),
                                           percent=True, higher_is_better=False)) + "</td>"] if general else []),
            f'<td class="num">{_fmt(acc.get("top1_agreement"))}</td>',
            f'<td class="num">{_fmt(acc.get("kl"))}</td>',
            f'<td class="num">{_fmt(lat.get("decode_tok_s"), 1)}</td>',
            f'<td class="num">{ttft}</td>',
            f'<td class="num">{_fmt(lat.get("peak_rss_mb"), 0)}</td>',
            f'<td class="nowrap">{_esc(lat.get("label") or _DASH)}</td>',
        ]
        rows.append(f'<tr{" class=bad" if bad else ""}>' + "".join(cells) + "</tr>")
    return _artifact_section(
        f'Deltas vs the reference <b>{_esc(ref_name)}</b> (green better, red worse). '
        "Top-1 agreement and KL vs the reference's logits. " + _ROW_LATENCY_NOTE, head, rows)


# --------------------------------------------------------------------------- SVG plots


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    k = int(round((end - start) / step))
    return [start + i * step for i in range(k + 1)]


def _tick_text(v: float, step: float) -> str:
    if step >= 1 or v == 0:
        return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


def _text_w(s: str, size: float) -> float:
    return 0.6 * size * len(s)


class _Svg:
    def __init__(self, w: int, h: int, title: str):
        self.w, self.h = w, h
        self.parts = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{_esc(title)}">',
                      f"<title>{_esc(title)}</title>",
                      f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>']

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, *, size: float = 12, anchor: str = "start", fill: str = "#1f2328",
             weight: str = "normal", rotate: Optional[float] = None) -> None:
        tr = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}" '
                          f'fill="{fill}" font-weight="{weight}"{tr}>{_esc(s)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, *, stroke: str = "#d0d7de", width: float = 1,
             dash: Optional[str] = None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                          f'stroke-width="{width:g}"{d}/>')

    def rect(self, x: float, y: float, w: float, h: float, *, fill: str, stroke: str = "none", opacity: float = 1,
             tip: Optional[str] = None) -> None:
        t = f"<title>{_esc(tip)}</title>" if tip else ""
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
                          f'fill="{fill}" stroke="{stroke}" fill-opacity="{opacity:g}">{t}</rect>')

    def circle(self, x: float, y: float, r: float, *, fill: str, stroke: str, width: float = 1.5,
               tip: Optional[str] = None) -> None:
        t = f"<title>{_esc(tip)}</title>" if tip else ""
        self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:g}" fill="{fill}" stroke="{stroke}" '
                          f'stroke-width="{width:g}">{t}</circle>')

    def done(self) -> str:
        return "\n".join(self.parts + ["</svg>"])


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _empty_plot(title: str, why: str) -> str:
    s = _Svg(620, 120, title)
    s.text(12, 24, title, size=14, weight="bold")
    s.text(12, 64, why, size=13, fill="#57606a")
    return s.done()


def _pareto_frontier(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Points not dominated by a smaller-or-equal artifact with a higher-or-equal metric, by size."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def _pareto_plot(report: dict, *, metric: str = "exact_match", title: str = "Exact match vs size",
                 y_label: str = "exact match", zoom: bool = False) -> str:
    """Metric (higher is better) vs size on storage, with the Pareto frontier.

    ``zoom``: the y axis runs from just under the lowest value to 1.0 instead of from 0, so that
    values that all sit near 1 (embedding cosines such as 0.992 vs 1.0) are told apart.
    """
    arts = _d(report.get("artifacts"))
    pts, missing = [], []
    for n in _ordered_artifacts(report) if arts else []:
        a = _d(arts.get(n))
        size, em = _mb(a.get("size_bytes")), _num(_d(a.get("accuracy")).get(metric))
        if size is None or em is None:
            missing.append(n)
        else:
            pts.append((n, size, em))
    if not pts:
        return _figure(_empty_plot(title, f"no artifact has both a size and an {y_label}"), "")
    W, H, ml, mr, mt, mb = 620, 400, 62, 22, 44, 70
    pw, ph = W - ml - mr, H - mt - mb
    xt = _nice_ticks(0.0, max(p[1] for p in pts) * 1.08)
    if zoom:
        y_lo = min(p[2] for p in pts) - 0.01
        top = max(p[2] for p in pts)
        y_hi = 1.0 if top <= 1.0 + 1e-6 else top
    else:
        y_lo = min(0.0, min(p[2] for p in pts))
        y_hi = max(1.0, max(p[2] for p in pts))
    yt = _nice_ticks(y_lo, y_hi)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + ph - (v - y0) / (y1 - y0) * ph

    s = _Svg(W, H, title)
    s.text(ml, 22, title, size=14, weight="bold")
    for v in xt:
        s.line(X(v), mt, X(v), mt + ph, stroke="#eaeef2")
        s.text(X(v), mt + ph + 17, _tick_text(v, xt[1] - xt[0]), size=11, anchor="middle", fill="#57606a")
    for v in yt:
        s.line(ml, Y(v), ml + pw, Y(v), stroke="#eaeef2")
        s.text(ml - 6, Y(v) + 4, _tick_text(v, yt[1] - yt[0]), size=11, anchor="end", fill="#57606a")
    s.line(ml, mt + ph, ml + pw, mt + ph, stroke="#57606a")
    s.line(ml, mt, ml, mt + ph, stroke="#57606a")
    s.text(ml + pw / 2, mt + ph + 34, "size on storage (MB)", size=12, anchor="middle")
    s.text(16, mt + ph / 2, y_label, size=12, anchor="middle", rotate=-90)

    front = _pareto_frontier(pts)
    obstacles: list[tuple[float, float, float, float]] = []
    if front:
        d = f"M{X(front[0][1]):.1f},{Y(front[0][2]):.1f}"
        for p in front[1:]:
            d += f" H{X(p[1]):.1f} V{Y(p[2]):.1f}"
        d += f" H{ml + pw:.1f}"
        # the frontier's segments are obstacles for the labels: text must not sit on the line
        for a, b in zip(front, front[1:] + [("", x1, front[-1][2])]):
            obstacles.append((X(a[1]), Y(a[2]) - 3, X(b[1]), Y(a[2]) + 3))
            obstacles.append((X(b[1]) - 3, min(Y(a[2]), Y(b[2])), X(b[1]) + 3, max(Y(a[2]), Y(b[2]))))
        s.add(f'<path d="{d}" fill="none" stroke="#1a7f37" stroke-width="2" stroke-dasharray="6 3"/>')
    front_names = {p[0] for p in front}

    # markers; points closer than a few pixels share one label
    clusters: list[list[tuple[str, float, float]]] = []
    for p in pts:
        for c in clusters:
            if abs(X(c[0][1]) - X(p[1])) < 9 and abs(Y(c[0][2]) - Y(p[2])) < 9:
                c.append(p)
                break
        else:
            clusters.append([p])
    # a cluster's markers become concentric rings (largest drawn first), so every colour shows
    for c in clusters:
        for k in range(len(c) - 1, -1, -1):
            n, size, em = c[k]
            role = _d(arts.get(n)).get("role") or "artifact"
            color = _ROLE_COLORS.get(role, "#bc4c00")
            on_front = n in front_names
            r = (6 if on_front else 5) + 3.5 * k
            fill = color if on_front and k == 0 else ("none" if k else "#ffffff")
            s.circle(X(size), Y(em), r, fill=fill, stroke=color, width=2,
                     tip=f"{n}: {size:.1f} MB, {y_label} {em:.{4 if zoom else 3}f}"
                         f"{' (Pareto frontier)' if on_front else ''}")
            obstacles.append((X(size) - r, Y(em) - r, X(size) + r, Y(em) + r))

    size_px = 12
    cands = [(10, 4, "start"), (-10, 4, "end"), (0, -11, "middle"), (0, 19, "middle"), (10, -10, "start"),
             (-10, -10, "end"), (10, 17, "start"), (-10, 17, "end"), (0, -25, "middle"), (0, 33, "middle"),
             (10, -24, "start"), (-10, -24, "end"), (10, 31, "start"), (-10, 31, "end")]
    placed: list[tuple[float, float, float, float]] = []
    for c in sorted(clusters, key=lambda c: (Y(c[0][2]), X(c[0][1]))):
        label = ", ".join(p[0] for p in c)
        px, py = X(c[0][1]), Y(c[0][2])
        w = _text_w(label, size_px)
        choice = None
        for dx, dy, anchor in cands:
            x = px + dx
            left = x if anchor == "start" else (x - w if anchor == "end" else x - w / 2)
            box = (left - 2, py + dy - size_px * 0.85, left + w + 2, py + dy + size_px * 0.3)
            inside = box[0] >= ml + 2 and box[2] <= W - 2 and box[1] >= 28 and box[3] <= mt + ph - 2
            if inside and not any(_overlap(box, o) for o in placed + obstacles):
                choice = (x, py + dy, anchor, box)
                break
        if choice is None:
            dx, dy, anchor = cands[0] if px + 10 + w < W else cands[1]
            x = px + dx
            left = x if anchor == "start" else x - w
            choice = (x, py + dy, anchor, (left, py + dy - 10, left + w, py + dy + 4))
        placed.append(choice[3])
        s.text(choice[0], choice[1], label, size=size_px, anchor=choice[2], weight="bold" if any(
            p[0] in front_names for p in c) else "normal")

    # legend (bottom row, under the axis title)
    lx, ly = ml, H - 12
    s.line(lx, ly - 4, lx + 22, ly - 4, stroke="#1a7f37", width=2, dash="6 3")
    s.text(lx + 28, ly, "Pareto frontier (filled points)", size=11, fill="#57606a")
    lx += 28 + _text_w("Pareto frontier (filled points)", 11) + 18
    roles_here: list[str] = []
    for n, *_ in pts:
        r = _d(arts.get(n)).get("role") or "artifact"
        if r not in roles_here:
            roles_here.append(r)
    for r in roles_here:
        color = _ROLE_COLORS.get(r, "#bc4c00")
        s.circle(lx + 4, ly - 4, 4, fill=color, stroke=color)
        s.text(lx + 12, ly, r, size=11, fill="#57606a")
        lx += 26 + _text_w(r, 11)
    cap = ("One point per artifact; higher and further left is better. The frontier joins the artifacts no other "
           f"artifact beats on both size and {y_label}.")
    if zoom:
        cap += f" The y axis starts at {_tick_text(y0, yt[1] - yt[0])}, not 0, so that small differences show."
    if missing:
        cap += f" Not plotted (size or {y_label} missing): {_esc(', '.join(missing))}."
    return _figure(s.done(), cap)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _quantiles(xs: Sequence[float]) -> tuple[float, float, float, float, float]:
    ys = sorted(xs)

    def q(f: float) -> float:
        i = f * (len(ys) - 1)
        lo = math.floor(i)
        hi = min(lo + 1, len(ys) - 1)
        return ys[lo] + (ys[hi] - ys[lo]) * (i - lo)

    return ys[0], q(0.25), q(0.5), q(0.75), ys[-1]


def _device_limits(report: dict, gate_prefix: str) -> dict[float, list[str]]:
    """Budget limit -> devices, from the device gates whose name starts with ``gate_prefix``."""
    out: dict[float, list[str]] = {}
    for dn, d in _d(report.get("devices")).items():
        for r in _d(_d(d).get("results")).values():
            for g in _l(_d(r).get("gates")):
                g = _d(g)
                lim = _num(g.get("limit"))
                if lim is not None and str(g.get("name", "")).startswith(gate_prefix):
                    out.setdefault(lim, [])
                    if dn not in out[lim]:
                        out[lim].append(dn)
    return out


def _hplot(title: str, unit: str, rows: list[dict], limits: dict[float, list[str]], *, bound: str) -> str:
    """Horizontal chart, one row per artifact.

    Each row has ``name`` and either ``samples`` (a distribution: box q1-q3, median, min-max
    whiskers, dots), or ``value`` (a bar) with optional ``hi`` (a whisker from value to hi), or
    nothing ("not measured"). ``limits``: budget -> devices, drawn as dashed lines when they are
    on a sensible scale, else listed under the plot.
    """
    rows = [r for r in rows if r]
    if not rows:
        return _empty_plot(title, "no artifacts")
    data_max = 0.0
    for r in rows:
        for v in list(r.get("samples") or []) + [r.get("value"), r.get("hi")]:
            if _num(v) is not None:
                data_max = max(data_max, float(v))
    on_scale = {k: v for k, v in limits.items() if data_max == 0 or k <= 3 * data_max}
    off_scale = {k: v for k, v in limits.items() if k not in on_scale}
    hi = max([data_max] + list(on_scale)) * 1.05 or 1.0
    ticks = _nice_ticks(0.0, hi)
    labels = {str(r.get("label")) for r in rows if r.get("label")}
    if len(labels) == 1:
        title += f" ({labels.pop()})"
        show_label = False
    else:
        show_label = bool(labels)
    for r in rows:
        r["right"] = _right_text(r, show_label)
    name_w = max(_text_w(r["name"], 12) for r in rows) + 18
    ml = max(90.0, name_w)
    mr = min(300.0, max(90.0, max(_text_w(r["right"], 11) for r in rows) + 16))
    mt = 40 + (16 * len(on_scale) if on_scale else 0)
    row_h = 30
    W = 620
    H = int(mt + row_h * len(rows) + 40)
    pw = W - ml - mr
    x0, x1 = ticks[0], ticks[-1]

    def X(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    s = _Svg(W, H, title)
    s.text(12, 22, title, size=14, weight="bold")
    bottom = mt + row_h * len(rows)
    for v in ticks:
        s.line(X(v), mt, X(v), bottom, stroke="#eaeef2")
        s.text(X(v), bottom + 16, _tick_text(v, ticks[1] - ticks[0]), size=11, anchor="middle", fill="#57606a")
    s.text(ml + pw / 2, bottom + 32, unit, size=12, anchor="middle")
    s.line(ml, mt, ml, bottom, stroke="#57606a")
    s.line(ml, bottom, ml + pw, bottom, stroke="#57606a")
    # budget lines, labels stacked above the plot so they never collide
    for i, (lim, devs) in enumerate(sorted(on_scale.items())):
        x = X(lim)
        s.line(x, mt - 14 * (len(on_scale) - i) + 4, x, bottom, stroke="#cf222e", width=1.2, dash="4 3")
        label = f"{bound} {_fmt(lim)} {unit.split(' ')[0]}: {', '.join(devs)}"
        anchor = "start" if x + 4 + _text_w(label, 11) <= W - 4 else "end"
        s.text(x + (4 if anchor == "start" else -4), mt - 14 * (len(on_scale) - i) + 2, label, size=11,
               anchor=anchor, fill="#cf222e")
    for i, r in enumerate(rows):
        cy = mt + row_h * i + row_h / 2
        color = _ROLE_COLORS.get(r.get("role") or "artifact", "#bc4c00")
        s.text(ml - 8, cy + 4, r["name"], size=12, anchor="end")
        samples = [float(v) for v in (r.get("samples") or []) if _num(v) is not None]
        value, whisk = _num(r.get("value")), _num(r.get("hi"))
        if samples:
            mn, q1, med, q3, mx = _quantiles(samples)
            s.line(X(mn), cy, X(mx), cy, stroke=color, width=1.2)
            s.line(X(mn), cy - 6, X(mn), cy + 6, stroke=color, width=1.2)
            s.line(X(mx), cy - 6, X(mx), cy + 6, stroke=color, width=1.2)
            s.rect(X(q1), cy - 9, X(q3) - X(q1), 18, fill=color, stroke=color, opacity=0.25,
                   tip=f"{r['name']}: median {_fmt(med)} {unit}, q1 {_fmt(q1)}, q3 {_fmt(q3)}, n={len(samples)}")
            s.line(X(med), cy - 9, X(med), cy + 9, stroke=color, width=2.5)
            for j, v in enumerate(samples[:400]):
                jitter = ((j * 7919) % 13 - 6) * 1.1
                s.add(f'<circle cx="{X(v):.1f}" cy="{cy + jitter:.1f}" r="1.6" fill="{color}" fill-opacity="0.55"/>')
        elif value is not None:
            s.rect(X(0), cy - 8, X(value) - X(0), 16, fill=color, opacity=0.8,
                   tip=f"{r['name']}: {_fmt(value)} {unit}" + (f", p95 {_fmt(whisk)}" if whisk is not None else ""))
            if whisk is not None:
                s.line(X(value), cy, X(whisk), cy, stroke="#1f2328", width=1.5)
                s.line(X(whisk), cy - 6, X(whisk), cy + 6, stroke="#1f2328", width=1.5)
        right = r["right"]
        s.text(ml + pw + 8, cy + 4, right, size=11, fill="#57606a" if right == "not measured" else "#1f2328")
    svg = s.done()
    note = ""
    if off_scale:
        note = " Off-scale budgets: " + "; ".join(
            f"{bound} {_fmt(k)} {unit.split(' ')[0]} on {', '.join(v)}" for k, v in sorted(off_scale.items())) + "."
    return svg + (f"<div class='small muted'>{_esc(note.strip())}</div>" if note else "")


def _right_text(r: dict, show_label: bool) -> str:
    """The value column of one :func:`_hplot` row."""
    samples = [float(v) for v in (r.get("samples") or []) if _num(v) is not None]
    value, whisk = _num(r.get("value")), _num(r.get("hi"))
    if samples:
        text = f"median {_fmt(_quantiles(samples)[2], 1)} · n={len(samples)}"
    elif value is not None:
        text = f"p50 {_fmt(value, 1)} · p95 {_fmt(whisk, 1)}" if whisk is not None else _fmt(value, 1)
    else:
        return "not measured"
    return f"{text} ({r['label']})" if show_label and r.get("label") else text


def _lat_rows(report: dict, p50: str, p95: str, samples_key: str) -> list[dict]:
    arts = _d(report.get("artifacts"))
    rows = []
    for n in _ordered_artifacts(report) if arts else []:
        a = _d(arts.get(n))
        lat = _d(a.get("latency"))
        samples = lat.get(samples_key)
        rows.append({"name": n, "role": a.get("role"), "label": lat.get("label"),
                     "samples": samples if isinstance(samples, list) else None,
                     "value": lat.get(p50), "hi": lat.get(p95)})
    return rows


def _encoder_plots(report: dict) -> str:
    per_inf = _lat_rows(report, "per_inference_ms_p50", "per_inference_ms_p95", "samples_ms")
    batch, seq = _batch_seq(report)
    shape = _shape_text(batch, seq)
    proto = _d(_d(report.get("protocol")).get("latency"))
    runs = sorted({int(v) for v in (_d(_d(a).get("latency")).get("runs") for a in _d(report.get("artifacts")).values())
                   if _num(v) is not None})
    repeats = ", ".join(map(str, runs)) if runs else proto.get("repeats")
    warmup = proto.get("warmup")
    cap = "Time of one forward pass" + (f" at {shape} tokens" if shape else "")
    if repeats is not None:
        cap += f", {repeats} timed repeats" + (f" after {warmup} warm-up runs" if warmup is not None else "")
    cap += ". "
    with_samples = sum(1 for r in per_inf if r.get("samples"))
    if with_samples:
        cap += ("Rows with recorded samples (latency.samples_ms): box = quartiles, line = median, "
                "whiskers = min-max, dots = samples. ")
    if with_samples < len(per_inf):
        cap += ("Other rows: bar" if with_samples else "Bar") + " = median (p50), whisker = p95. "
    cap += "Dashed red lines: the devices' maximum per-inference budgets. Lower is better."
    figs = [
        _pareto_plot(report, metric="accuracy", title="Accuracy vs size", y_label="accuracy", zoom=True)
        if _is_classifier(report) else
        _pareto_plot(report, metric="embedding_cosine", title="Embedding cosine vs size",
                     y_label="embedding cosine", zoom=True),
        _figure(_hplot("Per-inference latency", "ms per inference", per_inf,
                       _device_limits(report, "per_inference_ms"), bound="max"), _esc(cap)),
    ]
    return "<h2>Plots</h2><div class='plots'>" + "\n".join(figs) + "</div>"


def _plots(report: dict) -> str:
    if _is_encoder(report):
        return _encoder_plots(report)
    tok_rows = []
    arts = _d(report.get("artifacts"))
    for n in _ordered_artifacts(report) if arts else []:
        a = _d(arts.get(n))
        lat = _d(a.get("latency"))
        tok_rows.append({"name": n, "role": a.get("role"), "label": lat.get("label"), "value": lat.get("decode_tok_s")})
    per_tok = _lat_rows(report, "per_token_ms_p50", "per_token_ms_p95", "samples_ms")
    ttft = _lat_rows(report, "ttft_ms_p50", "ttft_ms_p95", "ttft_samples_ms")
    with_samples = sum(1 for r in per_tok if r.get("samples"))
    lat_caption = ""
    if with_samples:
        lat_caption = ("Rows with recorded samples (latency.samples_ms): box = quartiles, line = median, "
                       "whiskers = min-max, dots = samples. ")
    if with_samples < len(per_tok):
        lat_caption += ("Other rows: bar" if with_samples else "Bar") + " = median (p50) per-token time, "
        lat_caption += "whisker = p95. "
    lat_caption += "Lower is better."
    figs = [
        _pareto_plot(report),
        _figure(_hplot("Decode throughput", "tok/s", tok_rows, _device_limits(report, "decode_tok_s"), bound="min"),
                "Decode tokens per second per artifact (higher is better); dashed red lines: the devices' "
                "minimum budgets."),
        _figure(_hplot("Per-token decode latency", "ms per token", per_tok, {}, bound="max"),
                lat_caption),
        _figure(_hplot("Time to first token", "ms", ttft, _device_limits(report, "ttft_ms"), bound="max"),
                ("Rows with ttft_samples_ms: distribution as above; other rows: bar"
                 if any(r.get("samples") for r in ttft) else "Bar")
                + " = TTFT p50, whisker = p95. Dashed red lines: the devices' maximum TTFT budgets."),
    ]
    return "<h2>Plots</h2><div class='plots'>" + "\n".join(figs) + "</div>"


# --------------------------------------------------------------------------- gates and incompatibilities


def _gate_rows(gates: Iterable[Any], *, with_artifact: bool = True) -> str:
    rows = []
    for g in gates:
        g = _d(g)
        word, cls = _verdict(g.get("passed"))
        cells = [f"<td>{_esc(g.get('artifact') or _DASH)}</td>"] if with_artifact else []
        digits = 4 if "cosine" in str(g.get("name") or "") else None  # 0.9996 must not read as 1
        cells += [f"<td>{_esc(g.get('name') or '?')}</td>", f'<td class="num">{_fmt(g.get("value"), digits)}</td>',
                  f'<td class="num">{_fmt(g.get("limit"), digits)}</td>', f'<td class="res {cls}">{word}</td>',
                  f'<td class="wrap">{_esc(g.get("detail") or "")}</td>']
        rows.append(f"<tr{' class=bad' if cls == 'fail' else ''}>" + "".join(cells) + "</tr>")
    return "".join(rows)


_GATE_HEAD = ('<colgroup><col style="width:11%"><col style="width:23%"><col style="width:8%">'
              '<col style="width:7%"><col style="width:6%"><col></colgroup>'
              "<thead><tr><th>artifact</th><th>gate</th><th>value</th><th>limit</th><th>result</th>"
              "<th>detail</th></tr></thead>")


def _gates_section(report: dict) -> str:
    out = ["<h2>Gates</h2>", f"<h3>Accuracy gates (every artifact vs {_esc(report.get('reference') or 'merged')})</h3>"]
    acc = _l(report.get("gates"))
    if acc:
        out.append(f'<table class="full gates">{_GATE_HEAD}<tbody>{_gate_rows(acc)}</tbody></table>')
    else:
        out.append('<p class="muted">No accuracy gates in this report.</p>')
    for dn, d in _d(report.get("devices")).items():
        d = _d(d)
        word, cls = _verdict(d.get("passed"))
        dep = _l(d.get("deployable"))
        out.append(f'<h3>{_esc(dn)} <span class="res {cls}">{word}</span> '
                   f'<span class="small muted">{"required" if d.get("required") else "optional"}'
                   f'{" · deployable: " + _esc(", ".join(map(str, dep))) if dep else ""}</span></h3>')
        rows = []
        for art, r in _d(d.get("results")).items():
            r = _d(r)
            if r.get("compatible") is False:
                rows.append(f'<tr><td>{_esc(art)}</td><td colspan="5" class="res na">incompatible: no budget gates '
                            "evaluated (reasons under Incompatibilities)</td></tr>")
                continue
            gates = _l(r.get("gates"))
            if not gates:
                word2, cls2 = _verdict(r.get("passed"))
                rows.append(f'<tr><td>{_esc(art)}</td><td colspan="3" class="muted">no budgets set</td>'
                            f'<td class="res {cls2}">{word2}</td><td></td></tr>')
                continue
            rows.append(_gate_rows([{**_d(g), "artifact": _d(g).get("artifact") or art} for g in gates]))
        if rows:
            out.append(f'<table class="full gates">{_GATE_HEAD}<tbody>{"".join(rows)}</tbody></table>')
        else:
            out.append('<p class="muted">No artifacts checked on this device.</p>')
    return "\n".join(out)


def _incompat_section(report: dict) -> str:
    blocks = []
    for dn, d in _d(report.get("devices")).items():
        for art, r in _d(_d(d).get("results")).items():
            r = _d(r)
            reasons, sugg, warn = _l(r.get("reasons")), _l(r.get("suggestions")), _l(r.get("warnings"))
            if r.get("compatible") is not False and not warn:
                continue
            head = "incompatible" if r.get("compatible") is False else "compatible, with warnings"
            ram = _num(r.get("est_ram_mb"))
            parts = [f"<b>{_esc(dn)} × {_esc(art)}</b>: {head}"
                     + (f' <span class="small muted">(estimated RAM {ram:.0f} MB)</span>' if ram is not None else "")]
            if r.get("compatible") is False:
                parts.append("<div>Reasons:</div><ol>" + "".join(f"<li>{_esc(x)}</li>" for x in reasons or
                                                                 ["(no reason recorded)"]) + "</ol>")
                if sugg:
                    parts.append("<div>Suggestions:</div><ul>" + "".join(f"<li>{_esc(x)}</li>" for x in sugg) + "</ul>")
            if warn:
                parts.append("<div>Warnings:</div><ul>" + "".join(f"<li>{_esc(x)}</li>" for x in warn) + "</ul>")
            blocks.append(f'<div class="incompat">{"".join(parts)}</div>')
    body = "".join(blocks) or '<p class="muted">Every artifact is compatible with every device.</p>'
    return "<h2>Incompatibilities and warnings</h2>" + body


def _artifact_details(report: dict) -> str:
    arts = _d(report.get("artifacts"))
    if not arts:
        return ""
    out = ["<h2>Artifact details</h2>"]
    for n in _ordered_artifacts(report):
        a = _d(arts.get(n))
        acc = _d(a.get("accuracy"))
        misses = _l(acc.get("misses_sample"))
        lat = _d(a.get("latency"))
        rows = [("path", a.get("path")), ("role", a.get("role")), ("format", a.get("format")),
                ("precision", a.get("precision")), ("int8 mode", a.get("int8_mode")), ("scheme", a.get("scheme")),
                ("size bytes", a.get("size_bytes")), ("eval examples", acc.get("n_examples"))]
        plan = _d(a.get("quant_plan"))
        if plan:
            counts = _d(plan.get("precision_counts"))
            reached = _d(plan.get("reached"))
            rows.append(("auto plan", ", ".join(f"{k} x{v}" for k, v in counts.items() if v)
                         + (f" (calibration check {reached['perplexity_increase_pct']:+.2f}% perplexity)"
                            if isinstance(reached.get("perplexity_increase_pct"), (int, float)) else "")))
            rows.append(("auto plan file", plan.get("file")))
        rows += [(f"latency {k}", v) for k, v in lat.items() if not isinstance(v, (dict, list))]
        miss = ""
        if misses:
            items = []
            for m in misses:
                m = _d(m)
                items.append(f"<li>prompt: <code>{_esc(m.get('prompt', ''))}</code><br>expected: "
                             f"<pre class=mono>{_esc(m.get('expected', ''))}</pre>got: "
                             f"<pre class=mono>{_esc(m.get('got', ''))}</pre></li>")
            miss = f"<div>Sample misses ({len(misses)}):</div><ul>{''.join(items)}</ul>"
        out.append(f"<details><summary><b>{_esc(n)}</b> <span class='small muted'>{_esc(a.get('path') or '')}"
                   f"</span></summary><div class='card'>{_kv(rows)}{miss}</div></details>")
    return "\n".join(out)


# --------------------------------------------------------------------------- page


def render_html(report: dict) -> str:
    """The report page as one self-contained HTML string."""
    report = report if isinstance(report, dict) else {}
    title = _title(report)
    body = [
        _header(report),
        _matrix(report),
        _artifact_table(report),
        _plots(report),
        _gates_section(report),
        _incompat_section(report),
        _artifact_details(report),
    ]
    return render_page(title, body)


def render_page(title: str, sections: Sequence[str]) -> str:
    """A self-contained page in this report's style around ``sections`` (HTML already escaped); other
    reports (``edgeft monitor``'s drift report) use it so they look and read the same."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def escape(value: Any) -> str:
    """Text escaped for the page (see :func:`render_page`); no URL-looking string survives."""
    return _esc(value)


def write_html(path: Union[str, os.PathLike], report: dict) -> Path:
    """Write the report page (:func:`render_html`) to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_html(report))
    return path
