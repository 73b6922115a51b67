"""The validation report: ``report.json`` (written atomically) and its terminal/text summary.

report.json schema (``schema_version`` 1)
-----------------------------------------
Top level:

- ``schema_version`` (int): 1.
- ``recipe`` (str): recipe name.
- ``reference`` (str): name of the artifact every other one is compared with (``"merged"``).
- ``passed`` (bool): every required device has a compatible artifact passing all its gates and
  every accuracy gate passed; the CLI exits non-zero when false.
- ``artifacts`` (object): artifact name -> artifact entry, in build order.
- ``devices`` (object): device profile name -> device entry.
- ``gates`` (list): accuracy gates (GateResult objects, below), every artifact vs the reference.
- ``flags`` (list of str): loud findings, e.g. ``FINE-TUNE ERASED: ...``.
- ``protocol`` (object): how the figures were obtained: eval examples, perplexity protocol
  (text, seq_len, stride, windows, tokens, tokenizer), latency protocol (prompt, new tokens,
  warm-up, repeats, host cpus).
- ``projection`` (object): ``calibrated_on`` (artifact whose host measurement fixed the
  per-token overhead), ``overhead_ms``, ``context_len``, ``host_threads``, and ``host``:
  artifact -> ``projected``, ``measured`` (per_token_ms_p50, decode_tok_s, ttft_ms_p50) and
  ``error`` (see :func:`edgeft.validate.projection.projection_error`).

Artifact entry:

- ``role`` (str): ``"base"`` (un-tuned model), ``"reference"`` (merged model) or ``"artifact"``.
- ``format`` (str): onnx | pytorch | torchscript | gguf.
- ``precision`` (str): weight precision: fp32 | fp16 | int8 | int4.
- ``int8_mode`` (str or null): dynamic | static | full-integer | weight-only.
- ``scheme`` (str or null): quantization scheme name.
- ``size_bytes`` (int): size on storage.
- ``path`` (str): where the artifact lives.
- ``accuracy`` (object): ``exact_match``, ``json_valid``, ``perplexity``, ``perplexity_general`` (with
  ``validate.perplexity.general``), ``top1_agreement``,
  ``kl`` (float or null each; agreement and KL are vs the reference's logits).
- ``latency`` (object or null): ``label`` (``measured-host`` | ``projected`` |
  ``measured-device``), ``threads`` (int), ``ttft_ms_p50``, ``ttft_ms_p95``, ``decode_tok_s``,
  ``per_token_ms_p50``, ``per_token_ms_p95``, ``peak_rss_mb`` (float or null each),
  ``samples_ms`` / ``ttft_samples_ms`` (raw per-token and TTFT timings, ms).
- ``onnx`` (object, ONNX artifacts): see :func:`edgeft.validate.compat.inspect_onnx`.
- ``quant_plan`` (object, ``auto`` artifacts): ``precision_counts`` (precision -> MatMuls),
  ``budget`` and ``reached`` (as in ``quant_plan.json``), ``file`` (the full per-layer plan).

Device entry:

- ``class`` (str): mobile | tpu | edge | host.
- ``threads`` (int): threads the runtime uses on it.
- ``required`` (bool): whether the overall result depends on it.
- ``passed`` (bool): some compatible artifact passes every gate on it.
- ``results`` (object): artifact name -> ``compatible`` (bool), ``reasons``, ``suggestions``,
  ``warnings`` (lists of str, see :func:`edgeft.validate.compat.check`), ``gates`` (list of
  GateResult objects: the device budgets), ``passed`` (bool), ``est_ram_mb`` (float),
  ``gated_on`` (the latency label the speed budgets were checked against: ``measured-device``
  when the profile has ``remote:``, else ``projected``, or ``measured-host`` for ``host``), and
  ``latency``: ``measured-host`` / ``projected`` / ``measured-device`` (object or null each).

GateResult object (:class:`edgeft.validate.gates.GateResult`): ``name`` (str, e.g.
``"exact_match max_degradation"``, ``"ttft_ms (measured-host)"``), ``artifact`` (str),
``value`` and ``limit`` (float or null, same unit), ``passed`` (bool), ``detail`` (str, a
sentence), ``device`` (str or null).

Floats that are NaN or infinite are written as null (strict JSON).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path, PurePath
from typing import Any, Optional, Union

from edgeft.artifacts import kind_of_report
from edgeft.fileio import atomic_write_text
from edgeft.validate.gates import fmt_num

__all__ = ["device_table", "print_summary", "summary_table", "summary_text", "to_jsonable", "write_json"]

MB = 1024 * 1024
_NONE = "-"


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy values, paths, dataclasses, pydantic models and sets made JSON-ready."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic
        return to_jsonable(obj.model_dump(by_alias=True))
    if hasattr(obj, "tolist"):  # numpy scalars and arrays (without importing numpy)
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serializable: {obj!r}")


def write_json(path: Union[str, os.PathLike], report: dict) -> Path:
    """Write ``report`` to ``path`` atomically (temp file in the same folder, then ``os.replace``).

    A reader never sees a half-written file, and a crash leaves the previous report intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------- summary


def _ordered_artifacts(report: dict) -> list[str]:
    """Base first, then the reference (merged), then the rest in report order."""
    arts = report.get("artifacts") or {}
    ref = report.get("reference") or "merged"
    base = [n for n, a in arts.items() if (a or {}).get("role") == "base"]
    refs = [n for n, a in arts.items() if n not in base and (n == ref or (a or {}).get("role") == "reference")]
    return base + refs + [n for n in arts if n not in base and n not in refs]


def _num(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _with_delta(value: Any, ref: Any, percent: bool, sep: str = " ") -> str:
    v = _num(value)
    if v is None:
        return _NONE
    r = _num(ref)
    if r is None:
        return fmt_num(v)
    if percent:
        if r == 0:
            return fmt_num(v)
        return f"{fmt_num(v)}{sep}({100.0 * (v - r) / abs(r):+.1f}%)"
    return f"{fmt_num(v)}{sep}({v - r:+.3f})"


def _plain(value: Any, digits: int = 1) -> str:
    v = _num(value)
    return _NONE if v is None else f"{v:.{digits}f}"


def _mb(mb: float) -> str:
    return f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def _fmt_prec(a: dict, sep: str = " ") -> str:
    text = f"{a.get('format') or '?'}/{a.get('precision') or '?'}"
    if a.get("int8_mode"):
        text += f"{sep}{a['int8_mode']}"
    return text


def _device_cell(result: Optional[dict]):
    from rich.text import Text

    if not result:
        return Text(_NONE, style="dim")
    if result.get("compatible") is False:
        return Text("n/a", style="dim")
    passed = result.get("passed")
    if passed is True:
        return Text("PASS", style="bold green")
    if passed is False:
        return Text("FAIL", style="bold red")
    return Text("?", style="yellow")


# (header, compact header, justify)
_COLUMNS = (
    ("artifact", "artifact", "left"),
    ("format", "format", "left"),
    ("size MB", "size\nMB", "right"),
    ("exact match", "exact\nmatch", "right"),
    ("JSON valid", "JSON\nvalid", "right"),
    ("perplexity", "perp-\nlexity", "right"),
    ("tok/s", "tok/s", "right"),
    ("TTFT ms", "TTFT\nms", "right"),
    ("RAM MB", "RAM\nMB", "right"),
)


def summary_table(report: dict, *, compact: bool = False, devices: bool = True):
    """A :class:`rich.table.Table` with one row per artifact (base, merged, then the rest).

    Columns: artifact, format/precision, size MB, exact match (signed delta vs the reference,
    e.g. ``0.958 (-0.021)``), JSON valid, perplexity (percent delta), decode tok/s, TTFT ms p50,
    peak RAM MB, then one column per device: PASS / FAIL / n/a (incompatible) / - (not
    checked). A ``*`` marks required devices. Missing values show as ``-``.

    ``compact`` puts deltas and two-word headers on a second line (for 80-120 column
    terminals); ``devices=False`` leaves out the device columns (see :func:`device_table`).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    arts = report.get("artifacts") or {}
    devs = (report.get("devices") or {}) if devices else {}
    ref_name = report.get("reference") or "merged"
    ref_acc = ((arts.get(ref_name) or {}).get("accuracy")) or {}
    sep = "\n" if compact else " "

    table = Table(
        title=f"edgeft validate: {report.get('recipe', '?')}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        caption=f"deltas vs {ref_name}" + ("; * required device; n/a: incompatible (reasons below)" if devs else ""),
    )
    # "fold" everywhere: a too narrow terminal wraps a cell (at its spaces first), never hides digits
    general = any("perplexity_general" in ((a or {}).get("accuracy") or {}) for a in arts.values())
    columns = list(_COLUMNS)
    if general:  # validate.perplexity.general: the general-text check next to the task's perplexity
        columns.insert([c[0] for c in columns].index("perplexity") + 1, ("general ppl", "general\nppl", "right"))
    for header, short, justify in columns:
        table.add_column(short if compact else header, justify=justify, overflow="fold")
    for dev, d in devs.items():
        table.add_column(_device_header(dev, d, compact), justify="center", overflow="fold")

    for name in _ordered_artifacts(report):
        a = arts.get(name) or {}
        acc = a.get("accuracy") or {}
        lat = a.get("latency") or {}
        is_ref = name == ref_name
        size = _num(a.get("size_bytes"))
        row = [
            Text(name, style="bold" if is_ref else ""),
            Text(_fmt_prec(a, sep)),
            Text(_NONE if size is None else _mb(size / MB)),
            Text(_with_delta(acc.get("exact_match"), None if is_ref else ref_acc.get("exact_match"), False, sep)),
            Text(_plain(acc.get("json_valid"), 3)),
            Text(_with_delta(acc.get("perplexity"), None if is_ref else ref_acc.get("perplexity"), True, sep)),
            *([Text(_with_delta(acc.get("perplexity_general"),
                                None if is_ref else ref_acc.get("perplexity_general"), True, sep))] if general else []),
            Text(_plain(lat.get("decode_tok_s"))),
            Text(_plain(lat.get("ttft_ms_p50"), 0)),
            Text(_plain(lat.get("peak_rss_mb"), 0)),
        ]
        for dev, d in devs.items():
            row.append(_device_cell(((d or {}).get("results") or {}).get(name)))
        table.add_row(*row)
    return table


def _device_header(dev: str, d: Optional[dict], compact: bool) -> str:
    name = f"{dev}{'*' if (d or {}).get('required') else ''}"
    return name.replace("-", "-\n", 1) if compact else name


def device_table(report: dict):
    """Artifact rows × device columns (PASS / FAIL / n/a / -), for terminals too narrow for one table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    devs = report.get("devices") or {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="* required device; n/a: incompatible (reasons below)")
    table.add_column("artifact", overflow="fold")
    for dev, d in devs.items():
        table.add_column(_device_header(dev, d, False), justify="center", overflow="fold")
    for name in _ordered_artifacts(report):
        table.add_row(Text(name), *[_device_cell(((d or {}).get("results") or {}).get(name)) for d in devs.values()])
    return table


def _tables(report: dict, width: int) -> list:
    """The widest layout that fits ``width``: one table, one compact table, or two tables."""
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=max(width, 1000), file=io.StringIO(), color_system=None)

    def fits(table) -> bool:
        return Measurement.get(probe, probe.options, table).maximum <= width

    for compact in (False, True):
        table = summary_table(report, compact=compact)
        if fits(table):
            return [table]
    if not report.get("devices"):
        return [table]
    return [summary_table(report, compact=True, devices=False), device_table(report)]


def _failed_gates(report: dict) -> list[dict]:
    failed = [g for g in report.get("gates") or [] if not (g or {}).get("passed")]
    for dev, d in (report.get("devices") or {}).items():
        for art, r in ((d or {}).get("results") or {}).items():
            for g in (r or {}).get("gates") or []:
                if not (g or {}).get("passed"):
                    failed.append({**g, "device": dev, "artifact": g.get("artifact") or art})
    return failed


def _sections(report: dict) -> list:
    """Everything printed below the table, as rich renderables."""
    from rich.text import Text

    out: list = []
    failed = _failed_gates(report)
    if failed:
        out.append(Text("failed gates:", style="bold"))
        for g in failed:
            where = f"[{g['device']}] " if g.get("device") else ""
            line = Text("  FAIL ", style="bold red")
            line.append(f"{where}{g.get('artifact', '?')} {g.get('name', '?')}: {g.get('detail', '')}")
            out.append(line)

    flags = report.get("flags") or []
    if flags:
        out.append(Text("flags:", style="bold"))
        for flag in flags:
            style = "bold red" if "ERASED" in str(flag).upper() else "yellow"
            out.append(Text(f"  {flag}", style=style))

    kind = kind_of_report(report)
    if kind in ("classifier", "image-classifier"):
        out.append(Text("classifier metrics (accuracy / macro-F1 on the eval split; label agreement vs the reference; "
                        "per-inference latency, measured-host):", style="bold"))
        for art, a in (report.get("artifacts") or {}).items():
            acc, lat = (a or {}).get("accuracy") or {}, (a or {}).get("latency") or {}
            out.append(Text(f"  {art}: accuracy {fmt_num(acc.get('accuracy'))} macro-F1 {fmt_num(acc.get('macro_f1'))} "
                            f"agreement {fmt_num(acc.get('label_agreement'))}, per inference p50 "
                            f"{fmt_num(lat.get('per_inference_ms_p50'))} ms"
                            + (f" at batch {lat.get('batch')} x seq {lat.get('seq_len')}" if lat else "")))
    elif kind == "encoder":
        out.append(Text("encoder metrics (embedding cosine vs the reference; per-inference latency, measured-host):",
                        style="bold"))
        for art, a in (report.get("artifacts") or {}).items():
            acc, lat = (a or {}).get("accuracy") or {}, (a or {}).get("latency") or {}
            out.append(Text(f"  {art}: cosine {fmt_num(acc.get('embedding_cosine'))} (min "
                            f"{fmt_num(acc.get('embedding_cosine_min'))}), per inference p50 "
                            f"{fmt_num(lat.get('per_inference_ms_p50'))} ms / p95 {fmt_num(lat.get('per_inference_ms_p95'))} ms"
                            + (f" at batch {lat.get('batch')} x seq {lat.get('seq_len')}" if lat else "")))

    proj = report.get("projection") or {}
    if proj.get("host"):
        out.append(Text(f"projection vs measurement on host (roofline + {fmt_num(proj.get('overhead_ms'))} ms/token "
                        f"overhead calibrated on {proj.get('calibrated_on')}):", style="bold"))
        for art, p in proj["host"].items():
            err = ((p.get("error") or {}).get("per_token_ms") or {}).get("pct_error")
            out.append(Text(f"  {art}: projected {fmt_num((p.get('projected') or {}).get('per_token_ms_p50'))} ms/token, "
                            f"measured {fmt_num((p.get('measured') or {}).get('per_token_ms_p50'))} ms/token "
                            f"(error {fmt_num(err)}%)"))

    incompatible, warned = [], []
    for dev, d in (report.get("devices") or {}).items():
        for art, r in ((d or {}).get("results") or {}).items():
            r = r or {}
            if r.get("compatible") is False:
                # The terminal gets the first reason and fix, shortened; report.json keeps every detail.
                reasons = r.get("reasons") or ["incompatible"]
                text = Text(f"  {dev} x {art}: ")
                text.append(_shorten(reasons[0]))
                if len(reasons) > 1:
                    text.append(f" (+{len(reasons) - 1} more reasons in report.json)", style="dim")
                if r.get("suggestions"):
                    text.append(" -> fix: " + _shorten(r["suggestions"][0]), style="dim")
                incompatible.append(text)
            if r.get("warnings"):
                warned.append(Text(f"  {dev} x {art}: " + "; ".join(r["warnings"]), style="yellow"))
    if incompatible:
        out.append(Text("incompatible:", style="bold"))
        out.extend(incompatible)
    if warned:
        out.append(Text("warnings:", style="bold"))
        out.extend(warned)

    passed = report.get("passed")
    line = Text("overall: ", style="bold")
    if passed is True:
        line.append("PASS", style="bold green")
    elif passed is False:
        line.append("FAIL", style="bold red")
        missing = [
            dev for dev, d in (report.get("devices") or {}).items()
            if (d or {}).get("required") and (d or {}).get("passed") is False
        ]
        why = []
        if missing:
            why.append(f"required devices without a passing artifact: {', '.join(missing)}")
        if any(not g.get("device") for g in failed):
            why.append("accuracy gates failed")
        if why:
            line.append(f" ({'; '.join(why)})")
    else:
        line.append("UNKNOWN", style="yellow")
    out.append(line)
    return out


def print_summary(report: dict, console=None) -> None:
    """Print :func:`summary_table`, then failed gates, flags, incompatibilities and the verdict.

    The table takes the widest layout that fits the console: one line per artifact, else the
    compact layout (deltas on a second line), else the compact table without device columns
    followed by :func:`device_table`.
    """
    if console is None:
        from rich.console import Console

        console = Console()
    for table in _tables(report, console.width):
        console.print(table)
    for item in _sections(report):
        console.print(item)


def _shorten(text: str, limit: int = 160) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summary_text(report: dict, width: int = 160) -> str:
    """The same summary as plain text (for logs and the model card)."""
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    print_summary(report, console)
    return console.export_text()
