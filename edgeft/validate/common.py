"""What every validate path shares (causal LMs, encoders and text classifiers, image classifiers): the setup,
each artifact's report entry, host latency per thread count, the accuracy gates with the "fine-tune erased"
flag, and the verdict and report files. The device loop is :mod:`edgeft.validate.matrix`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class Context:
    """One validate call's settings: the recipe's ``validate`` section, the output folder, the device profiles
    (and which are required), and this machine's CPU count."""

    cfg: object  # edgeft.config.schema.ValidateConfig
    out_dir: Path
    devices: dict
    required: set
    host_threads: int

    @classmethod
    def of(cls, cfg, out_dir: Path) -> "Context":
        """``cfg`` (None: the defaults) with its devices loaded; ``out_dir`` is created."""
        from edgeft.config.loader import load_device
        from edgeft.config.schema import ValidateConfig

        cfg = cfg or ValidateConfig()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        devices = {name: load_device(name) for name in cfg.devices}
        required = set(cfg.require if cfg.require is not None else cfg.devices)
        return cls(cfg, out_dir, devices, required, os.cpu_count() or 1)

    def thread_counts(self, also: int) -> list[int]:
        """The distinct thread counts latency is measured at: each device's, capped at this machine's, and ``also``."""
        return sorted({min(d.cpu.threads, self.host_threads) for d in self.devices.values()} | {also})


def reference_of(artifacts) -> object:
    """The one artifact with role 'reference' (StageError when there is not exactly one)."""
    ref = [a for a in artifacts if a.role == "reference"]
    if len(ref) != 1:
        from edgeft.errors import StageError

        raise StageError(f"validate: {len(ref)} artifacts have role 'reference' ({', '.join(a.name for a in ref)}); "
                         "pass exactly one, the merged model the others are compared with")
    return ref[0]


def report_order(artifacts) -> list:
    """Base first, then the reference, then the artifacts (each group in the given order)."""
    return sorted(artifacts, key=lambda a: {"base": 0, "reference": 1}.get(a.role, 2))


def size_bytes(a) -> int:
    """The artifact's size as its description says, else measured (:func:`edgeft.artifacts.size_of`)."""
    from edgeft.artifacts import size_of

    return a.spec.size_bytes if a.spec is not None else size_of(a.path, a.format)


def add_graph_info(info: dict, a) -> None:
    """Record what a device cares about in an ONNX or .tflite graph (ops, shapes, int8 mode, ...)."""
    if a.format == "onnx":
        from edgeft.runtime.lm import find_onnx
        from edgeft.validate import compat

        info["onnx"] = compat.inspect_onnx(find_onnx(Path(a.path)))
    elif a.format == "tflite":
        from edgeft.validate.tflite_compat import find_tflite, inspect_tflite

        info["tflite"] = inspect_tflite(find_tflite(Path(a.path)))


def add_quant_plan(info: dict, a) -> None:
    """Carry an ``auto`` artifact's per-layer plan summary (quant_plan.json) into the report."""
    f = Path(a.path) / "quant_plan.json"
    if f.is_file():
        plan = json.loads(f.read_text())
        info["quant_plan"] = {"precision_counts": plan.get("precision_counts"), "budget": plan.get("budget"),
                              "reached": plan.get("reached"), "file": str(f)}


def entry(a, accuracy: dict, kind: Optional[str] = None) -> dict:
    """An artifact's report entry: what it is, its size and path, ``accuracy``, graph details (and an ``auto``
    plan); ``latency`` is filled in by :func:`measure_host`. ``kind`` is written for the models scored without
    generation (encoder, classifier, image-classifier)."""
    info = {"role": a.role, **({"kind": kind} if kind else {}), "format": a.format, "precision": a.precision,
            "int8_mode": a.int8_mode, "scheme": a.scheme, "size_bytes": size_bytes(a), "path": str(a.path),
            "accuracy": accuracy, "latency": None, **a.extra}
    add_graph_info(info, a)
    add_quant_plan(info, a)
    return info


def no_lm_metrics(n: int) -> dict:
    """The causal-LM accuracy fields, empty, for a model of ``n`` eval examples scored without generation."""
    return {"exact_match": None, "json_valid": None, "perplexity": None, "top1_agreement": None, "kl": None,
            "n_examples": n}


def measure_host(artifacts, rep_artifacts: dict, thread_counts: Sequence[int], report_threads: int,
                 measure: Callable) -> dict:
    """``measure(artifact, threads)`` on this machine for each artifact at each thread count, labelled
    ``measured-host``; the measurement at ``report_threads`` becomes the artifact's ``latency`` entry.
    Returns ``{(name, threads): measurement}``."""
    latency: dict[tuple[str, int], dict] = {}
    for a in artifacts:
        for t in thread_counts:
            m = measure(a, t)
            m["label"] = "measured-host"
            latency[(a.name, t)] = m
        rep_artifacts[a.name]["latency"] = latency[(a.name, report_threads)]
    return latency


def accuracy_gates(artifacts, rep_artifacts: dict, default_budgets, goals: Callable, reference: Mapping,
                   erased_metric: Optional[str] = None) -> tuple[list[dict], list[str], set]:
    """The accuracy gates of every shippable artifact vs the reference, and the "fine-tune erased" flag.

    ``goals(budgets)`` maps metric -> goal (None: not gated) for an artifact's budgets (its own over
    ``default_budgets``); ``reference`` holds the values compared with. With ``erased_metric`` and a base
    model among ``artifacts``, an artifact whose metric fell back to the base model's is flagged and fails.
    Returns (gate dicts, flags, names of the artifacts that failed a gate).
    """
    from edgeft.metrics.gate import GateResult, quality_gates
    from edgeft.validate.gates import artifact_budgets, erased_flag

    base = next((a for a in artifacts if a.role == "base"), None)
    base_value = rep_artifacts[base.name]["accuracy"][erased_metric] if base and erased_metric else None
    out: list[dict] = []
    flags: list[str] = []
    for a in artifacts:
        if a.role != "artifact":
            continue
        budgets = artifact_budgets(a.budgets, default_budgets)
        acc = rep_artifacts[a.name]["accuracy"]
        out += [g.to_dict() for g in quality_gates(a.name, acc, reference, goals(budgets))]
        if base_value is not None:
            msg = erased_flag(a.name, acc[erased_metric], base_value, reference[erased_metric],
                              budgets.erased_margin, metric=erased_metric)
            if msg:
                flags.append(msg)
                out.append(GateResult("fine-tune-erased", a.name, acc[erased_metric], base_value, False,
                                      msg).to_dict())
    return out, flags, {g["artifact"] for g in out if not g["passed"]}


def finish(report: dict, ctx: Context, failed_acc: set, console):
    """Set the verdict (no accuracy gate failed, every required device passed), type ``report``, write
    report.json and report.html from it, print its summary; return the typed report."""
    from edgeft.validate.html import write_html
    from edgeft.validate.report import ValidationReport, print_summary

    report["passed"] = not failed_acc and all(d["passed"] for d in report["devices"].values() if d["required"])
    typed = ValidationReport.parse(report, str(ctx.out_dir / "report.json"))
    typed.write(ctx.out_dir / "report.json")
    write_html(ctx.out_dir / "report.html", typed)
    if console is not None:
        print_summary(typed, console)
    return typed
