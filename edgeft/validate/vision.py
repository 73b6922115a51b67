"""Validate image classifiers: every artifact x every device profile, on the held-out images.

Per artifact, scored by its own runtime (:mod:`edgeft.runtime.vision`) on the eval split: top-1
(``accuracy``), top-5, macro-F1 and per-class F1, label agreement and logit differences vs the
merged model; the base model (ImageNet head) is not scored, its head does not know the classes.
Latency: one image per inference, measured on this machine in a fresh process at each distinct
thread count (``measured-host``). Compatibility and budgets per device come from the same
:func:`edgeft.validate.matrix.device_matrix` as text classifiers: an Edge TPU profile checks every op of a
full-integer LiteRT graph against its list and limits, a phone NPU int8 QDQ ONNX or int8 LiteRT.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeft.validate.common import (Context, accuracy_gates, entry, finish, measure_host, no_lm_metrics,
                                    reference_of)
from edgeft.validate.encoders import KEEP, microcontroller
from edgeft.validate.matrix import Timing, device_matrix

log = logging.getLogger(__name__)


def validate_images(artifacts, records: list[dict], out_dir: Path, cfg, recipe_name: str = "",
                    console=None):
    """Validate image-classifier ``artifacts`` on ``records`` (``{"image": path, "label"}``)."""
    from edgeft.artifacts import report_fields
    from edgeft.data.images import batch
    from edgeft.finetune.objectives.classify import label_ids
    from edgeft.metrics.classify import agreement, topk_scores
    from edgeft.models.vision import labels as model_labels, preprocessing
    from edgeft.runtime.bench import measure_image
    from edgeft.runtime.vision import ImageRuntime

    ctx = Context.of(cfg, out_dir)
    cfg = ctx.cfg
    records = records[: cfg.eval_examples] if cfg.eval_examples else records
    reference = reference_of(artifacts)
    labels = model_labels(reference.path)
    gold = np.asarray(label_ids(records, labels, "eval"), np.int64)
    pp = preprocessing(reference.path)
    log.info("validate: preprocessing %d eval images (%dx%d)", len(records), pp.size, pp.size)
    x = batch([r["image"] for r in records], pp)
    scored = [a for a in artifacts if a.role != "base"]
    ref_logits = ImageRuntime(reference.path, "pytorch", ctx.host_threads).logits(x)
    rep_artifacts: dict[str, dict] = {}
    for a in sorted(scored, key=lambda a: a.role != "reference"):
        log.info("validate: scoring %s (%s %s) on %d images", a.name, a.format, a.precision, len(records))
        logits = ref_logits if a is reference else ImageRuntime(a.path, a.format, ctx.host_threads).logits(x)
        s = topk_scores(logits, gold, len(labels))
        acc = {**no_lm_metrics(len(records)), "accuracy": s["top1"], "top5": s["top5"], "topk": s["topk"],
               "macro_f1": s["macro_f1"], "per_class_f1": dict(zip(labels, s["per_class_f1"])),
               **agreement(ref_logits, logits)}
        rep_artifacts[a.name] = entry(a, acc, "image-classifier")
    lat = cfg.latency

    def measure(a, t):
        log.info("validate: per-image latency of %s with %d threads", a.name, t)
        return measure_image(a.path, a.format, t, lat.warmup, max(lat.repeats, 10))

    counts = ctx.thread_counts(min(2, ctx.host_threads))
    # per-inference latency is measured on the deployable graphs
    latency = measure_host([a for a in scored if a.format != "pytorch"], rep_artifacts, counts, max(counts), measure)
    acc_gates, flags, failed_acc = accuracy_gates(scored, rep_artifacts, cfg.budgets,
                                                  lambda b: {"accuracy": b.accuracy},
                                                  rep_artifacts[reference.name]["accuracy"])
    rep_devices = device_matrix(scored, rep_artifacts, latency, ctx, failed_acc,
                                Timing(("per_inference_ms_p50",), KEEP, project=microcontroller))
    report = {"schema_version": 1, "recipe": recipe_name, **report_fields("image-classifier"),
              "reference": reference.name, "passed": None,
              "protocol": {"eval_examples": len(records),
                           "classification": f"argmax of the logits vs the eval labels; {pp.size}x{pp.size} center "
                                             f"crop (crop_pct {pp.crop_pct}), each artifact run by its own runtime; "
                                             "label agreement and logit differences vs the reference",
                           "latency": {**lat.model_dump(), "per_inference": "one image",
                                       "host_cpus": ctx.host_threads}},
              "labels": labels, "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates,
              "flags": flags,
              "projection": {"note": "roofline projection covers decoder LMs only; image classifiers are measured"}}
    return finish(report, ctx, failed_acc, console)
