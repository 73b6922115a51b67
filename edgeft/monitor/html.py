"""``drift.html``: the drift report as one self-contained page in the validation report's style.

Header with the verdict banner, cards for what was compared (bundle, artifact, log, thresholds), the
feature table (test, statistic, p-value or distance, threshold, result) and, per numeric feature, the
reference and log quantiles side by side. No scripts, no external resources.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from edgeft.fileio import atomic_write_text
from edgeft.validate.html import escape, render_page

_DASH = "–"


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return _DASH
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return escape(v)


def _kv(rows) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(_DASH if v is None else v)}</dd>" for k, v in rows) + "</dl>"


def render_drift_html(report: dict) -> str:
    drifted = report.get("drifted") or []
    tested = [f for f in report.get("features") or [] if f.get("tested")]
    if drifted:
        word, cls, why = "DRIFT", "fail", "drift in: " + ", ".join(drifted)
    elif tested:
        word, cls, why = "NO DRIFT", "pass", f"{len(tested)} features tested; none differs from the training data"
    else:
        word, cls, why = "UNKNOWN", "unknown", "too few logged requests to test any feature"
    log = report.get("log") or {}
    d = report.get("defaults") or {}
    title = f"{report.get('name')} {report.get('version')}: drift of {report.get('artifact')}"
    body = [f"<h1>{escape(title)}</h1>",
            f'<div class="banner {cls}"><span class="word">{word}</span><span class="why">{escape(why)}</span></div>',
            '<div class="cards">',
            '<div class="card"><h3>Served</h3>' + _kv([("bundle", report.get("bundle")),
                                                      ("manifest_sha256", report.get("manifest_sha256")),
                                                      ("artifact", report.get("artifact")),
                                                      ("kind", report.get("kind"))]) + "</div>",
            '<div class="card"><h3>Log</h3>' + _kv([("folder", log.get("folder")), ("requests", log.get("rows")),
                                                   ("unreadable lines", log.get("bad_lines")),
                                                   ("other artifacts", ", ".join(f"{k} ({v})" for k, v in (
                                                       log.get("other_artifacts") or {}).items()) or None)]) + "</div>",
            '<div class="card"><h3>Thresholds</h3>' + _kv([
                ("alpha (KS, chi-square)", d.get("alpha")), ("Jensen-Shannon margin over noise", d.get("js_margin")),
                ("min rows per feature", d.get("min_samples"))]) + "<p class=\"small muted\">The reference is the "
            "training data (reference_stats.json in the bundle); for confidence, the artifact on held-out "
            "inputs at package time.</p></div>",
            "</div>", "<h2>Features</h2>",
            '<table class="full"><tr><th>Feature</th><th>Test</th><th>Statistic</th><th>p-value</th>'
            "<th>Threshold</th><th>n (ref / log)</th><th>Mean (ref / log)</th><th>Result</th><th>Note</th></tr>"]
    for f in report.get("features") or []:
        res = ("DRIFT", "fail") if f.get("drift") else (("ok", "pass") if f.get("tested") else ("not tested", "na"))
        bad = ' class="bad"' if f.get("drift") else ""
        body.append(
            f"<tr{bad}><td>{escape(f.get('feature'))}</td>"
            f"<td>{escape(f.get('test'))}</td><td class=\"num\">{_num(f.get('statistic'))}</td>"
            f"<td class=\"num\">{_num(f.get('p_value'))}</td><td class=\"num\">{_num(f.get('threshold'))}</td>"
            f"<td class=\"num\">{_num(f.get('n_reference'))} / {_num(f.get('n_log'))}</td>"
            f"<td class=\"num\">{_num(f.get('reference_mean'))} / {_num(f.get('log_mean'))}</td>"
            f"<td><span class=\"res {res[1]}\">{res[0]}</span></td><td class=\"wrap small\">{escape(f.get('note') or '')}"
            "</td></tr>")
    body.append("</table>")
    numeric = [f for f in report.get("features") or [] if f.get("reference_quantiles") or f.get("log_quantiles")]
    if numeric:
        from edgeft.monitor.drift import QUANTILES

        head = "".join(f"<th>p{q}</th>" for q in QUANTILES)
        body += ["<h2>Distributions</h2>", '<p class="muted small">Percentiles of each numeric feature, reference '
                 "(training data, or the artifact on held-out inputs) above the log.</p>",
                 f"<table><tr><th>Feature</th><th></th>{head}</tr>"]
        for f in numeric:
            for label, key in (("reference", "reference_quantiles"), ("log", "log_quantiles")):
                cells = "".join(f'<td class="num">{_num(v)}</td>' for v in (f.get(key) or [None] * len(QUANTILES)))
                name = escape(f.get("feature")) if label == "reference" else ""
                body.append(f"<tr><td>{name}</td><td>{label}</td>{cells}</tr>")
        body.append("</table>")
    rv = report.get("review") or {}
    if rv:
        body += ["<h2>Review file</h2>", f"<p><code>{escape(rv.get('file'))}</code>: {escape(rv.get('rows'))} "
                 f"requests by {escape(rv.get('by'))}. {escape(rv.get('note'))}</p>"]
    return render_page(title, body)


def write_drift_html(path: Union[str, os.PathLike], report: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, render_drift_html(report))
    return path
