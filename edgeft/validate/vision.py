"""Validate image classifiers: every artifact x every device profile, on the held-out images.

Per artifact, scored by its own runtime (:mod:`edgeft.runtime.vision`) on the eval split: top-1
(``accuracy``), top-5, macro-F1 and per-class F1, label agreement and logit differences vs the
merged model; the base model (ImageNet head) is not scored, its head does not know the classes.
Latency: one image per inference, measured on this machine in a fresh process at each distinct
thread count (``measured-host``). Compatibility and budgets per device come from the same
:func:`edgeft.validate.device_matrix` as text classifiers: an Edge TPU profile checks every op of a
full-integer LiteRT graph against its list and limits, a phone NPU int8 QDQ ONNX or int8 LiteRT.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def validate_images(artifacts, records: list[dict], out_dir: Path, cfg, recipe_name: str = "",
                    console=None):
    from edgeft.artifacts import report_fields
    from edgeft.config.loader import load_device
    from edgeft.data.images import batch
    from edgeft.finetune.objectives.classify import label_ids
    from edgeft.models.vision import labels as model_labels, preprocessing
    from edgeft.metrics.classify import agreement, topk_scores
    from edgeft.metrics.gate import evaluate_goal
    from edgeft.runtime.bench import measure_image
    from edgeft.runtime.vision import ImageRuntime
    from edgeft.validate import _add_onnx_info, _size_bytes, _write_reports, device_matrix
    from edgeft.validate import gates

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = {name: load_device(name) for name in cfg.devices}
    required = set(cfg.require if cfg.require is not None else cfg.devices)
    records = records[: cfg.eval_examples] if cfg.eval_examples else records
    reference = next(a for a in artifacts if a.role == "reference")
    labels = model_labels(reference.path)
    gold = np.asarray(label_ids(records, labels, "eval"), np.int64)
    pp = preprocessing(reference.path)
    log.info("validate: preprocessing %d eval images (%dx%d)", len(records), pp.size, pp.size)
    x = batch([r["image"] for r in records], pp)
    host_threads = os.cpu_count() or 1
    scored = [a for a in artifacts if a.role != "base"]
    ref_logits = ImageRuntime(reference.path, "pytorch", host_threads).logits(x)
    rep_artifacts: dict[str, dict] = {}
    for a in sorted(scored, key=lambda a: a.role != "reference"):
        log.info("validate: scoring %s (%s %s) on %d images", a.name, a.format, a.precision, len(records))
        logits = ref_logits if a is reference else ImageRuntime(a.path, a.format, host_threads).logits(x)
        s = topk_scores(logits, gold, len(labels))
        acc = {"exact_match": None, "json_valid": None, "perplexity": None, "top1_agreement": None, "kl": None,
               "n_examples": len(records), "accuracy": s["top1"], "top5": s["top5"], "topk": s["topk"],
               "macro_f1": s["macro_f1"], "per_class_f1": dict(zip(labels, s["per_class_f1"])),
               **agreement(ref_logits, logits)}
        info = {"role": a.role, "kind": "image-classifier", "format": a.format, "precision": a.precision,
                "int8_mode": a.int8_mode, "scheme": a.scheme, "size_bytes": _size_bytes(a), "path": str(a.path),
                "accuracy": acc, "latency": None, **a.extra}
        _add_onnx_info(info, a)
        rep_artifacts[a.name] = info
    lat_cfg = cfg.latency
    latency: dict[tuple[str, int], dict] = {}
    thread_counts = sorted({min(d.cpu.threads, host_threads) for d in devices.values()} | {min(2, host_threads)})
    for a in scored:
        if a.format == "pytorch":
            continue  # per-inference latency is measured on the deployable graphs
        for t in thread_counts:
            log.info("validate: per-image latency of %s with %d threads", a.name, t)
            m = measure_image(a.path, a.format, t, lat_cfg.warmup, max(lat_cfg.repeats, 10))
            m["label"] = "measured-host"
            latency[(a.name, t)] = m
        rep_artifacts[a.name]["latency"] = latency[(a.name, max(thread_counts))]
    acc_gates, flags = [], []
    ref_acc = rep_artifacts[reference.name]["accuracy"]["accuracy"]
    for a in scored:
        if a.role != "artifact":
            continue
        budgets = gates.artifact_budgets(a.budgets, cfg.budgets)
        acc_gates += [g.to_dict() for g in evaluate_goal(
            "accuracy", a.name, rep_artifacts[a.name]["accuracy"]["accuracy"], ref_acc, budgets.accuracy,
            higher_is_better=True)]
    failed_acc = {g["artifact"] for g in acc_gates if not g["passed"]}
    rep_devices = device_matrix(scored, rep_artifacts, latency, devices, required, failed_acc, host_threads)
    passed = not failed_acc and all(d["passed"] for d in rep_devices.values() if d["required"])
    report = {"schema_version": 1, "recipe": recipe_name, **report_fields("image-classifier"),
              "reference": reference.name, "passed": passed,
              "protocol": {"eval_examples": len(records),
                           "classification": f"argmax of the logits vs the eval labels; {pp.size}x{pp.size} center "
                                             f"crop (crop_pct {pp.crop_pct}), each artifact run by its own runtime; "
                                             "label agreement and logit differences vs the reference",
                           "latency": {**lat_cfg.model_dump(), "per_inference": "one image", "host_cpus": host_threads}},
              "labels": labels, "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates,
              "flags": flags,
              "projection": {"note": "roofline projection covers decoder LMs only; image classifiers are measured"}}
    return _write_reports(report, out_dir, console)
