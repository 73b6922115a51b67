"""``report.html``: the validation report (:class:`~edgeft.validate.report.ValidationReport`) as one page.

The page is self-contained: inline CSS, inline SVG plots, no scripts, no external fonts, images
or links, so it opens the same from a CI artifact, an e-mail attachment or an air-gapped box.

Sections: header (recipe, overall verdict, flags, protocol and how each figure was obtained),
device x artifact matrix, artifact table, plots (exact match vs size with the Pareto frontier,
per-token and first-token latency, decode tok/s), then every gate and every incompatibility in
full. Any value may be missing or null; it shows as a dash.

Encoder reports (:class:`~edgeft.validate.report.EncoderReport`) get their own artifact columns
(embedding cosine vs the reference, or accuracy and label agreement for classifiers; per-inference
latency at batch x sequence length), a metric-vs-size plot and a per-inference latency plot instead
of the generation ones, and protocol cards that say what the metric measures; ``projection.note``,
when present, is shown as a card.

The markup is in Jinja2 templates shipped with the package (``edgeft/validate/templates``):
``page.html.j2`` (the page and its CSS, ``report.css``; :func:`render_page` lends it to other
reports such as ``edgeft monitor``'s), ``report.html.j2`` (the sections) and ``plots.svg.j2``
(one macro per plot). Autoescape is on, and every value printed goes through :func:`escape`,
which also turns ``://`` into ``&#58;//`` so no URL-looking string is ever in the file. This
module turns the typed report into what the templates print: verdicts, table cells, and the plots'
geometry (ticks, scales, label placement), which is arithmetic the templates would only obscure.

The plots are hand-written SVG (macros) rather than matplotlib or another plotting library: they
are a few rectangles, lines and labels; matplotlib would be a new heavy dependency (and seconds of
import and font-cache time on a 2-core CI box) for that, and SVG keeps the text crisp, selectable
and searchable in the page.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from edgeft.fileio import atomic_write_text
from edgeft.metrics.gate import short_number
from edgeft.validate.report import (
    ArtifactEntry,
    ClassifierReport,
    DecodeLatency,
    DeviceResult,
    EncoderReport,
    LMAccuracy,
    ValidationReport,
    has_general_perplexity,
)

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


# --------------------------------------------------------------------------- templates and escaping


def escape(value: Any) -> str:
    """Text escaped for the page (see :func:`render_page`); no URL-looking string survives.

    Markup (:class:`markupsafe.Markup`, e.g. a rendered macro) is already escaped and is left as is.
    """
    from markupsafe import escape as html_escape

    return str(html_escape(value)).replace("://", "&#58;//")


def _finalize(value: Any):
    """Every value a template prints, as markup: escaped by :func:`escape`, so no URL-looking string either."""
    from markupsafe import Markup

    return Markup(escape(value))


@lru_cache(maxsize=1)
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edgeft.validate", "templates"), autoescape=True,
                             finalize=_finalize, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(num=_fmt, f1=lambda v: f"{v:.1f}", g=lambda v: f"{v:g}")
    env.globals.update(DASH=_DASH, LABELS=LABELS)
    return env


def _role_color(role: Optional[str]) -> str:
    return _ROLE_COLORS.get(role or "artifact", "#bc4c00")


# --------------------------------------------------------------------------- small helpers


def _fmt(v: Optional[float], digits: Optional[int] = None) -> str:
    """A number for a table cell: ``digits`` decimals, else 3 significant-ish; tiny values in e-notation."""
    if v is None or isinstance(v, bool) or not math.isfinite(v):
        return _DASH
    f = float(v)
    if digits is not None:
        return f"{f:.{digits}f}"
    a = abs(f)
    if a == 0:
        return "0"
    if a < 1e-3:
        return f"{f:.1e}"
    return short_number(f)


def _mb(size_bytes: Optional[int]) -> Optional[float]:
    return None if size_bytes is None else size_bytes / MB


def _verdict(passed: Optional[bool]) -> tuple[str, str]:
    """(text, css class) of a pass/fail flag that may be missing."""
    if passed is True:
        return "PASS", "pass"
    if passed is False:
        return "FAIL", "fail"
    return "?", "unknown"


def _artifact_names(report: ValidationReport) -> list[str]:
    """Artifacts in display order, then any name that only a device result mentions."""
    names = report.ordered_artifacts()
    for d in report.devices.values():
        for n in d.results:
            if n not in names:
                names.append(n)
    return names


def _gate_short(name: str) -> str:
    return (name or "?").split(" (")[0]


def _title(report: ValidationReport) -> str:
    return f"edgeft validate: {report.recipe}" if report.recipe else "edgeft validate"


def _batch_seq(report: ValidationReport) -> tuple[Any, Any]:
    """(batch, seq_len) of the encoder latency protocol, else of the first artifact that recorded them."""
    lat = report.protocol.latency
    batch, seq = (lat.batch, lat.seq_len) if lat else (None, None)
    for a in report.artifacts.values():
        if a.latency is not None:
            batch = batch if batch is not None else a.latency.batch
            seq = seq if seq is not None else a.latency.seq_len
    return batch, seq


def _shape_text(batch: Any, seq: Any) -> str:
    """``batch 1 × seq 128`` (parts that are missing left out)."""
    parts = ([f"batch {batch}"] if batch is not None else []) + ([f"seq {seq}"] if seq is not None else [])
    return " × ".join(parts)


def _scalars(model: Any, skip: Iterable[str] = ()) -> list[tuple[str, Any]]:
    """(key, value) of every scalar a protocol or latency object recorded (unset fields, objects and lists left out),
    in the order report.json has them: the settings a card lists."""
    if model is None:
        return []
    return [(k, v) for k, v in model.model_dump(by_alias=True, exclude_unset=True).items()
            if k not in skip and not isinstance(v, (dict, list))]


# --------------------------------------------------------------------------- header and protocol


def _overall_reasons(report: ValidationReport) -> list[str]:
    why = []
    missing = [n for n, d in report.devices.items() if d.required and d.passed is False]
    if missing:
        why.append("required devices without a passing artifact: " + ", ".join(missing))
    failed = sorted({g.artifact for g in report.gates if not g.passed})
    if failed:
        why.append("accuracy gates failed for: " + ", ".join(failed))
    return why


def _banner(report: ValidationReport) -> dict:
    word, cls = _verdict(report.passed)
    if cls == "pass":
        why = "every required device has a compatible artifact passing all its gates, and every accuracy gate passed"
        req = [n for n, d in report.devices.items() if d.required]
        if req:
            why += f" (required: {', '.join(req)})"
    elif cls == "fail":
        why = "; ".join(_overall_reasons(report)) or "see the gates below"
    else:
        word, why = "UNKNOWN", "report.json has no overall verdict"
    return {"word": word, "cls": cls, "why": why}


def _label_counts(report: ValidationReport) -> dict[str, int]:
    """Latency label -> how many figures in the report carry it (artifacts' own, then every device result's)."""
    counts: dict[str, int] = {}
    labels = [a.latency.label for a in report.artifacts.values() if a.latency is not None]
    for d in report.devices.values():
        for r in d.results.values():
            labels += [lab for lab in LABELS if r.latency.of(lab) is not None]
    for lab in labels:
        if lab:
            counts[lab] = counts.get(lab, 0) + 1
    return counts


def _protocol(report: ValidationReport) -> dict:
    """What the protocol cards list: each card's settings, the projection note, and the latency labels used."""
    p = report.protocol
    recorded = bool(p.model_dump(exclude_unset=True))
    if isinstance(report, EncoderReport):
        acc = [("eval examples", p.eval_examples)] if recorded else []
        acc += _scalars(p, ("eval_examples", "perplexity", "latency"))
        cards = {"accuracy": acc, "classification": p.classification is not None,
                 "latency": _scalars(p.latency, ("prompt", "new_tokens"))}  # LM-only latency settings left out
    else:
        acc = [("eval examples", p.eval_examples), ("max new tokens", p.max_new_tokens),
               ("agreement windows", p.agreement_windows)] if recorded else []
        acc += _scalars(p, ("eval_examples", "max_new_tokens", "agreement_windows", "perplexity", "latency"))
        cards = {"accuracy": acc, "perplexity": _scalars(p.perplexity), "latency": _scalars(p.latency)}
    return {**cards, "note": report.projection.note, "labels": _label_counts(report)}


# --------------------------------------------------------------------------- matrix


def _cell(dev: str, art: str, r: Optional[DeviceResult]) -> dict:
    """Class, status word, sub line and tooltip of one device x artifact cell."""
    if r is None:
        return {"cls": "none", "word": _DASH, "sub": "not checked", "tip": f"{dev} × {art}: not checked"}
    failed = [g for g in r.gates if not g.passed]
    tip = [f"{dev} × {art}"]
    if r.compatible is False:
        reasons = r.reasons or ["incompatible"]
        cls, word = "na", "incompatible"
        sub = f"{len(reasons)} reason{'s' if len(reasons) != 1 else ''}"
        tip.append("incompatible:")
        tip += [f"- {x}" for x in reasons]
        if r.suggestions:
            tip.append("suggestions:")
            tip += [f"- {x}" for x in r.suggestions]
    else:
        word, cls = _verdict(r.passed)
        if cls == "pass":
            sub = f"{len(r.gates)}/{len(r.gates)} gates" if r.gates else "no budgets set"
        elif cls == "fail":
            sub = ", ".join(_gate_short(g.name) for g in failed) if failed else "accuracy gates"
        else:
            sub = ""
        tip.append(word)
        tip += [f"{'PASS' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in r.gates]
        if cls == "fail" and not failed:
            tip.append("budgets pass; the artifact failed an accuracy gate")
    if r.warnings:
        sub += f" · {len(r.warnings)} warning{'s' if len(r.warnings) != 1 else ''}"
        tip.append("warnings:")
        tip += [f"- {w}" for w in r.warnings]
    return {"cls": cls, "word": word, "sub": sub, "tip": "\n".join(tip)}


def _matrix(report: ValidationReport) -> dict:
    head = []
    for dn, d in report.devices.items():
        word, cls = _verdict(d.passed)
        th = f"{d.threads} threads" if d.threads is not None else ""
        if d.threads_profile is not None and d.threads_profile != d.threads:
            th += f" (profile {d.threads_profile})"
        head.append({"name": dn, "profile_class": d.class_ or "?", "threads": th,
                     "required": "required" if d.required else "optional", "word": word, "cls": cls})
    rows = []
    for n in _artifact_names(report):
        role = report.artifacts[n].role if n in report.artifacts else None
        rows.append({"name": n, "role": role if role != "artifact" else None,
                     "cells": [_cell(dn, n, d.results.get(n)) for dn, d in report.devices.items()]})
    return {"head": head, "rows": rows}


# --------------------------------------------------------------------------- artifact table


def _delta(value: Optional[float], ref: Optional[float], *, percent: bool, higher_is_better: bool) -> Optional[dict]:
    """The change vs the reference as text and a css class (better / worse / same); None when it cannot be told."""
    if value is None or ref is None:
        return None
    if percent:
        if ref == 0:
            return None
        d = 100.0 * (value - ref) / abs(ref)
        text, tiny = f"{d:+.1f}%", abs(d) < 0.05
    else:
        d = value - ref
        text, tiny = f"{d:+.3f}", abs(d) < 0.0005
    return {"text": text, "cls": "same" if tiny else ("better" if (d > 0) == higher_is_better else "worse")}


def _failed_acc(report: ValidationReport) -> dict[str, list[str]]:
    """Artifact -> short names of its failed accuracy gates."""
    out: dict[str, list[str]] = {}
    for g in report.gates:
        if not g.passed:
            out.setdefault(g.artifact, []).append(_gate_short(g.name))
    return out


def _row(n: str, a: ArtifactEntry, is_ref: bool, bad: Optional[list[str]]) -> dict:
    """What every artifact row shows first: the name, format and size cells."""
    return {"name": n, "is_ref": is_ref, "role": a.role if a.role != "artifact" else None,
            "path": a.path or "", "bad": bad, "format": f"{a.format or '?'} / {a.precision or '?'}",
            "extra": " ".join(x for x in (a.int8_mode, a.scheme) if x), "size_mb": _mb(a.size_bytes)}


def _lm_table(report: ValidationReport) -> dict:
    ref_name = report.reference or "merged"
    ref_acc = report.artifacts[ref_name].accuracy if ref_name in report.artifacts else LMAccuracy()
    failed_acc = _failed_acc(report)
    general = has_general_perplexity(report)
    rows = []
    for n in report.ordered_artifacts():
        a = report.artifacts[n]
        acc, lat = a.accuracy, a.latency
        is_ref = n == ref_name
        bad = failed_acc.get(n)

        def delta(key: str, percent: bool, higher: bool) -> Optional[dict]:
            return None if is_ref else _delta(getattr(acc, key), getattr(ref_acc, key), percent=percent,
                                              higher_is_better=higher)

        rows.append({**_row(n, a, is_ref, bad), "acc": acc, "lat": lat,
                     "em_bad": bool(bad) and any("exact_match" in b or "erased" in b for b in bad),
                     "ppl_bad": bool(bad) and any(b.startswith("perplexity") and "general" not in b for b in bad),
                     "gen_bad": bool(bad) and any("perplexity_general" in b for b in bad),
                     "em_delta": delta("exact_match", False, True), "ppl_delta": delta("perplexity", True, False),
                     "gen_delta": delta("perplexity_general", True, False) if general else None})
    return {"ref": ref_name, "general": general, "rows": rows}


def _encoder_table(report: EncoderReport) -> dict:
    ref_name = report.reference or "?"
    failed_acc = _failed_acc(report)
    shape = _shape_text(*_batch_seq(report))
    classifier = isinstance(report, ClassifierReport)  # accuracy and label agreement in place of the cosines
    metrics = (("accuracy", "accuracy"), ("label_agreement", "label agreement")) if classifier else (
        ("embedding_cosine", "embedding cosine (mean)"), ("embedding_cosine_min", "embedding cosine (min)"))
    rows = []
    for n in report.ordered_artifacts():
        a = report.artifacts[n]
        bad = failed_acc.get(n)
        lat = a.latency
        own = _shape_text(lat.batch, lat.seq_len) if lat is not None else ""
        rows.append({**_row(n, a, n == ref_name, bad), "lat": lat,
                     "metrics": [getattr(a.accuracy, key) for key, _ in metrics],
                     "metric_bad": bool(bad) and any(("accuracy" if classifier else "cosine") in b for b in bad),
                     "own_shape": own if own and own != shape else ""})  # timed at another shape
    return {"ref": ref_name, "classifier": classifier, "shape": shape,
            "metric_heads": [h for _, h in metrics], "rows": rows}


# --------------------------------------------------------------------------- gates, incompatibilities, details


def _gate_sections(report: ValidationReport) -> list[dict]:
    """Per device: its verdict and one entry per artifact result (incompatible, no budgets, or its gates)."""
    out = []
    for dn, d in report.devices.items():
        word, cls = _verdict(d.passed)
        results = []
        for art, r in d.results.items():
            rword, rcls = _verdict(r.passed)
            kind = "incompatible" if r.compatible is False else ("gates" if r.gates else "none")
            results.append({"artifact": art, "kind": kind, "word": rword, "cls": rcls, "gates": r.gates})
        out.append({"name": dn, "word": word, "cls": cls, "required": d.required, "deployable": d.deployable,
                    "results": results})
    return out


def _incompatibilities(report: ValidationReport) -> list[dict]:
    """Every device x artifact that is incompatible or compatible with warnings."""
    out = []
    for dn, d in report.devices.items():
        for art, r in d.results.items():
            if r.compatible is not False and not r.warnings:
                continue
            out.append({"device": dn, "artifact": art, "incompatible": r.compatible is False, "result": r})
    return out


def _details(report: ValidationReport) -> list[dict]:
    out = []
    for n in report.ordered_artifacts():
        a = report.artifacts[n]
        acc = a.accuracy
        rows = [("path", a.path), ("role", a.role), ("format", a.format), ("precision", a.precision),
                ("int8 mode", a.int8_mode), ("scheme", a.scheme), ("size bytes", a.size_bytes),
                ("eval examples", acc.n_examples)]
        plan = a.quant_plan
        if plan is not None:
            reached = plan.reached.get("perplexity_increase_pct")
            rows.append(("auto plan", ", ".join(f"{k} x{v}" for k, v in plan.precision_counts.items() if v)
                         + (f" (calibration check {reached:+.2f}% perplexity)"
                            if isinstance(reached, (int, float)) else "")))
            rows.append(("auto plan file", plan.file))
        rows += [(f"latency {k}", v) for k, v in _scalars(a.latency)]
        out.append({"name": n, "path": a.path or "", "rows": rows,
                    "misses": acc.misses_sample if isinstance(acc, LMAccuracy) else []})
    return out


# --------------------------------------------------------------------------- SVG plots: scales and layout


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


def _pareto_frontier(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Points not dominated by a smaller-or-equal artifact with a higher-or-equal metric, by size."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


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


_LABEL_SPOTS = ((10, 4, "start"), (-10, 4, "end"), (0, -11, "middle"), (0, 19, "middle"), (10, -10, "start"),
                (-10, -10, "end"), (10, 17, "start"), (-10, 17, "end"), (0, -25, "middle"), (0, 33, "middle"),
                (10, -24, "start"), (-10, -24, "end"), (10, 31, "start"), (-10, 31, "end"))


def _place_labels(clusters: list, X, Y, obstacles: list, front_names: set, W: float, ml: float, mt: float,
                  ph: float) -> list[dict]:
    """One label per cluster of points, at the first spot around it that stays inside the plot and clear of the
    other labels, the markers and the frontier (else right of the point, or left when it would leave the plot)."""
    size_px = 12
    placed: list[tuple[float, float, float, float]] = []
    labels = []
    for c in sorted(clusters, key=lambda c: (Y(c[0][2]), X(c[0][1]))):
        label = ", ".join(p[0] for p in c)
        px, py = X(c[0][1]), Y(c[0][2])
        w = _text_w(label, size_px)
        choice = None
        for dx, dy, anchor in _LABEL_SPOTS:
            x = px + dx
            left = x if anchor == "start" else (x - w if anchor == "end" else x - w / 2)
            box = (left - 2, py + dy - size_px * 0.85, left + w + 2, py + dy + size_px * 0.3)
            inside = box[0] >= ml + 2 and box[2] <= W - 2 and box[1] >= 28 and box[3] <= mt + ph - 2
            if inside and not any(_overlap(box, o) for o in placed + obstacles):
                choice = (x, py + dy, anchor, box)
                break
        if choice is None:
            dx, dy, anchor = _LABEL_SPOTS[0] if px + 10 + w < W else _LABEL_SPOTS[1]
            x = px + dx
            left = x if anchor == "start" else x - w
            choice = (x, py + dy, anchor, (left, py + dy - 10, left + w, py + dy + 4))
        placed.append(choice[3])
        labels.append({"x": choice[0], "y": choice[1], "text": label, "anchor": choice[2],
                       "bold": any(p[0] in front_names for p in c)})
    return labels


def _markers(pts: list, X, Y, roles: dict[str, str], front_names: set, y_label: str,
             digits: int) -> tuple[list, list[dict]]:
    """(clusters, markers): points closer than a few pixels form a cluster, which gets one label; a cluster's
    markers become concentric rings (largest drawn first), so every colour shows."""
    clusters: list[list[tuple[str, float, float]]] = []
    for p in pts:
        for c in clusters:
            if abs(X(c[0][1]) - X(p[1])) < 9 and abs(Y(c[0][2]) - Y(p[2])) < 9:
                c.append(p)
                break
        else:
            clusters.append([p])
    markers = []
    for c in clusters:
        for k in range(len(c) - 1, -1, -1):
            n, size, em = c[k]
            color = _role_color(roles[n])
            on_front = n in front_names
            markers.append({"x": X(size), "y": Y(em), "r": (6 if on_front else 5) + 3.5 * k, "color": color,
                            "fill": color if on_front and k == 0 else ("none" if k else "#ffffff"),
                            "tip": f"{n}: {size:.1f} MB, {y_label} {em:.{digits}f}"
                                   f"{' (Pareto frontier)' if on_front else ''}"})
    return clusters, markers


def _pareto_plot(report: ValidationReport, *, metric: str = "exact_match", title: str = "Exact match vs size",
                 y_label: str = "exact match", zoom: bool = False) -> dict:
    """Metric (higher is better) vs size on storage, with the Pareto frontier: the geometry ``plots.pareto`` draws.

    ``zoom``: the y axis runs from just under the lowest value to 1.0 instead of from 0, so that
    values that all sit near 1 (embedding cosines such as 0.992 vs 1.0) are told apart.
    """
    arts = report.artifacts
    pts, missing = [], []
    for n in report.ordered_artifacts():
        size, em = _mb(arts[n].size_bytes), getattr(arts[n].accuracy, metric)
        if size is None or em is None:
            missing.append(n)
        else:
            pts.append((n, size, em))
    if not pts:
        return {"empty": True, "title": title, "why": f"no artifact has both a size and an {y_label}"}
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

    front = _pareto_frontier(pts)
    obstacles: list[tuple[float, float, float, float]] = []
    path = f"M{X(front[0][1]):.1f},{Y(front[0][2]):.1f}"
    for p in front[1:]:
        path += f" H{X(p[1]):.1f} V{Y(p[2]):.1f}"
    path += f" H{ml + pw:.1f}"
    # the frontier's segments are obstacles for the labels: text must not sit on the line
    for a, b in zip(front, front[1:] + [("", x1, front[-1][2])]):
        obstacles.append((X(a[1]), Y(a[2]) - 3, X(b[1]), Y(a[2]) + 3))
        obstacles.append((X(b[1]) - 3, min(Y(a[2]), Y(b[2])), X(b[1]) + 3, max(Y(a[2]), Y(b[2]))))
    front_names = {p[0] for p in front}
    clusters, markers = _markers(pts, X, Y, {n: a.role for n, a in arts.items()}, front_names, y_label,
                                 4 if zoom else 3)
    obstacles += [(m["x"] - m["r"], m["y"] - m["r"], m["x"] + m["r"], m["y"] + m["r"]) for m in markers]
    labels = _place_labels(clusters, X, Y, obstacles, front_names, W, ml, mt, ph)

    # legend (bottom row, under the axis title): the frontier, then one dot per role shown
    legend, lx = [], ml + 28 + _text_w("Pareto frontier (filled points)", 11) + 18
    for role in dict.fromkeys(arts[n].role for n, *_ in pts):
        legend.append({"x": lx, "role": role, "color": _role_color(role)})
        lx += 26 + _text_w(role, 11)
    cap = ("One point per artifact; higher and further left is better. The frontier joins the artifacts no other "
           f"artifact beats on both size and {y_label}.")
    if zoom:
        cap += f" The y axis starts at {_tick_text(y0, yt[1] - yt[0])}, not 0, so that small differences show."
    if missing:
        cap += f" Not plotted (size or {y_label} missing): {', '.join(missing)}."
    return {"empty": False, "title": title, "W": W, "H": H, "ml": ml, "mt": mt, "pw": pw, "ph": ph,
            "y_label": y_label, "path": path, "markers": markers, "labels": labels, "legend": legend,
            "xticks": [(X(v), _tick_text(v, xt[1] - xt[0])) for v in xt],
            "yticks": [(Y(v), _tick_text(v, yt[1] - yt[0])) for v in yt], "caption": cap}


def _device_limits(report: ValidationReport, gate_prefix: str) -> dict[float, list[str]]:
    """Budget limit -> devices, from the device gates whose name starts with ``gate_prefix``."""
    out: dict[float, list[str]] = {}
    for dn, d in report.devices.items():
        for r in d.results.values():
            for g in r.gates:
                if g.limit is not None and g.name.startswith(gate_prefix):
                    out.setdefault(g.limit, [])
                    if dn not in out[g.limit]:
                        out[g.limit].append(dn)
    return out


def _right_text(r: dict, show_label: bool) -> str:
    """The value column of one :func:`_hplot` row."""
    samples, value, whisk = r["samples"], r["value"], r["hi"]
    if samples:
        text = f"median {_fmt(_quantiles(samples)[2], 1)} · n={len(samples)}"
    elif value is not None:
        text = f"p50 {_fmt(value, 1)} · p95 {_fmt(whisk, 1)}" if whisk is not None else _fmt(value, 1)
    else:
        return "not measured"
    return f"{text} ({r['label']})" if show_label and r.get("label") else text


def _hplot(title: str, unit: str, rows: list[dict], limits: dict[float, list[str]], *, bound: str) -> dict:
    """Horizontal chart, one row per artifact: the geometry ``plots.hbars`` draws.

    Each row has ``name`` and either ``samples`` (a distribution: box q1-q3, median, min-max
    whiskers, dots), or ``value`` (a bar) with optional ``hi`` (a whisker from value to hi), or
    nothing ("not measured"). ``limits``: budget -> devices, drawn as dashed lines when they are
    on a sensible scale, else listed under the plot.
    """
    if not rows:
        return {"empty": True, "title": title, "why": "no artifacts"}
    data_max = max([0.0] + [v for r in rows for v in r["samples"] + [r["value"], r["hi"]] if v is not None])
    on_scale = {k: v for k, v in limits.items() if data_max == 0 or k <= 3 * data_max}
    off_scale = {k: v for k, v in limits.items() if k not in on_scale}
    ticks = _nice_ticks(0.0, max([data_max] + list(on_scale)) * 1.05 or 1.0)
    labels = {r["label"] for r in rows if r.get("label")}
    show_label = len(labels) > 1
    if len(labels) == 1:
        title += f" ({labels.pop()})"
    rights = [_right_text(r, show_label) for r in rows]
    ml = max(90.0, max(_text_w(r["name"], 12) for r in rows) + 18)
    mr = min(300.0, max(90.0, max(_text_w(t, 11) for t in rights) + 16))
    mt = 40 + (16 * len(on_scale) if on_scale else 0)
    row_h, W = 30, 620
    bottom = mt + row_h * len(rows)
    pw = W - ml - mr
    x0, x1 = ticks[0], ticks[-1]

    def X(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    budgets = []  # labels stacked above the plot so they never collide
    for i, (lim, devs) in enumerate(sorted(on_scale.items())):
        label = f"{bound} {_fmt(lim)} {unit.split(' ')[0]}: {', '.join(devs)}"
        x, y = X(lim), mt - 14 * (len(on_scale) - i)
        anchor = "start" if x + 4 + _text_w(label, 11) <= W - 4 else "end"
        budgets.append({"x": x, "y": y, "label": label, "anchor": anchor, "lx": x + (4 if anchor == "start" else -4)})
    bars = []
    for i, (r, right) in enumerate(zip(rows, rights)):
        bar = {"name": r["name"], "cy": mt + row_h * i + row_h / 2, "color": _role_color(r.get("role")),
               "right": right, "box": None, "bar": None}
        if r["samples"]:
            mn, q1, med, q3, mx = _quantiles(r["samples"])
            bar["box"] = {"mn": X(mn), "q1": X(q1), "med": X(med), "q3": X(q3), "mx": X(mx),
                          "tip": f"{r['name']}: median {_fmt(med)} {unit}, q1 {_fmt(q1)}, q3 {_fmt(q3)}, "
                                 f"n={len(r['samples'])}",
                          "dots": [(X(v), ((j * 7919) % 13 - 6) * 1.1) for j, v in enumerate(r["samples"][:400])]}
        elif r["value"] is not None:
            whisk = r["hi"]
            bar["bar"] = {"x": X(0), "w": X(r["value"]) - X(0), "end": X(r["value"]),
                          "whisk": None if whisk is None else X(whisk),
                          "tip": f"{r['name']}: {_fmt(r['value'])} {unit}"
                                 + (f", p95 {_fmt(whisk)}" if whisk is not None else "")}
        bars.append(bar)
    note = ""
    if off_scale:
        note = "Off-scale budgets: " + "; ".join(
            f"{bound} {_fmt(k)} {unit.split(' ')[0]} on {', '.join(v)}" for k, v in sorted(off_scale.items())) + "."
    return {"empty": False, "title": title, "unit": unit, "W": W, "H": int(bottom + 40), "ml": ml, "mt": mt,
            "pw": pw, "bottom": bottom, "ticks": [(X(v), _tick_text(v, ticks[1] - ticks[0])) for v in ticks],
            "budgets": budgets, "bars": bars, "note": note}


def _lat_rows(report: ValidationReport, p50: str, p95: Optional[str], samples_key: Optional[str]) -> list[dict]:
    """One :func:`_hplot` row per artifact from its own latency: ``p50`` (and ``p95``) figure, and its samples."""
    rows = []
    for n in report.ordered_artifacts():
        a = report.artifacts[n]
        lat = a.latency
        rows.append({"name": n, "role": a.role, "label": lat and lat.label,
                     "samples": list(getattr(lat, samples_key)) if lat and samples_key else [],
                     "value": getattr(lat, p50) if lat else None,
                     "hi": getattr(lat, p95) if lat and p95 else None})
    return rows


def _samples_caption(rows: list[dict], bar_text: str) -> str:
    """What the marks of a latency plot mean: distributions where samples were recorded, bars elsewhere."""
    with_samples = sum(1 for r in rows if r["samples"])
    cap = ""
    if with_samples:
        cap = ("Rows with recorded samples (latency.samples_ms): box = quartiles, line = median, "
               "whiskers = min-max, dots = samples. ")
    if with_samples < len(rows):
        cap += ("Other rows: bar" if with_samples else "Bar") + bar_text
    return cap


def _encoder_plots(report: EncoderReport) -> list[dict]:
    per_inf = _lat_rows(report, "per_inference_ms_p50", "per_inference_ms_p95", "samples_ms")
    shape = _shape_text(*_batch_seq(report))
    proto = report.protocol.latency
    runs = sorted({a.latency.runs for a in report.artifacts.values()
                   if a.latency is not None and a.latency.runs is not None})
    repeats = ", ".join(map(str, runs)) if runs else (proto and proto.repeats)
    warmup = proto and proto.warmup
    cap = "Time of one forward pass" + (f" at {shape} tokens" if shape else "")
    if repeats is not None:
        cap += f", {repeats} timed repeats" + (f" after {warmup} warm-up runs" if warmup is not None else "")
    cap += ". " + _samples_caption(per_inf, " = median (p50), whisker = p95. ")
    cap += "Dashed red lines: the devices' maximum per-inference budgets. Lower is better."
    metric = (_pareto_plot(report, metric="accuracy", title="Accuracy vs size", y_label="accuracy", zoom=True)
              if isinstance(report, ClassifierReport) else
              _pareto_plot(report, metric="embedding_cosine", title="Embedding cosine vs size",
                           y_label="embedding cosine", zoom=True))
    return [{"pareto": metric},
            {"hbars": _hplot("Per-inference latency", "ms per inference", per_inf,
                             _device_limits(report, "per_inference_ms"), bound="max"), "caption": cap}]


def _plots(report: ValidationReport) -> list[dict]:
    """The page's plots, in order; each is ``{"pareto": geometry}`` or ``{"hbars": geometry, "caption": text}``."""
    if isinstance(report, EncoderReport):
        return _encoder_plots(report)
    tok_rows = _lat_rows(report, "decode_tok_s", None, None)
    per_tok = _lat_rows(report, "per_token_ms_p50", "per_token_ms_p95", "samples_ms")
    ttft = _lat_rows(report, "ttft_ms_p50", "ttft_ms_p95", "ttft_samples_ms")
    lat_caption = _samples_caption(per_tok, " = median (p50) per-token time, whisker = p95. ") + "Lower is better."
    ttft_caption = (("Rows with ttft_samples_ms: distribution as above; other rows: bar"
                     if any(r["samples"] for r in ttft) else "Bar")
                    + " = TTFT p50, whisker = p95. Dashed red lines: the devices' maximum TTFT budgets.")
    return [{"pareto": _pareto_plot(report)},
            {"hbars": _hplot("Decode throughput", "tok/s", tok_rows, _device_limits(report, "decode_tok_s"),
                             bound="min"),
             "caption": "Decode tokens per second per artifact (higher is better); dashed red lines: the devices' "
                        "minimum budgets."},
            {"hbars": _hplot("Per-token decode latency", "ms per token", per_tok, {}, bound="max"),
             "caption": lat_caption},
            {"hbars": _hplot("Time to first token", "ms", ttft, _device_limits(report, "ttft_ms"), bound="max"),
             "caption": ttft_caption}]


# --------------------------------------------------------------------------- page


def render_html(report: Union[ValidationReport, Mapping[str, Any]]) -> str:
    """The report page as one self-contained HTML string (``report``: a report, or a mapping that parses as one)."""
    report = ValidationReport.parse(report)
    encoder = isinstance(report, EncoderReport)
    return _env().get_template("report.html.j2").render(
        title=_title(report), report=report, encoder=encoder, banner=_banner(report), protocol=_protocol(report),
        matrix=_matrix(report), table=_encoder_table(report) if encoder else _lm_table(report),
        plots=_plots(report), gate_sections=_gate_sections(report), incompatibilities=_incompatibilities(report),
        details=_details(report))


def render_page(title: str, sections: Sequence[str]) -> str:
    """A self-contained page in this report's style around ``sections`` (HTML already escaped); other
    reports (``edgeft monitor``'s drift report) use it so they look and read the same."""
    from markupsafe import Markup

    return _env().get_template("page.html.j2").render(title=title, sections=[Markup(s) for s in sections])


def write_html(path: Union[str, os.PathLike], report: Union[ValidationReport, Mapping[str, Any]]) -> Path:
    """Write the report page (:func:`render_html`) to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_html(report))
    return path
