"""Pipeline stages for image classifiers (objective ``image-classify``, task ``image-cls``).

The image-classifier task (:class:`edgeft.pipeline.tasks.ImageTask`) hands its stages to these functions,
giving each what it needs:

- data: ``data.images`` (the embedded digit scans, an image folder, or a CSV/JSONL of path,label)
  split by a seeded shuffle into train and a held-out eval split; the last ``finetune`` validation
  slice (``VAL_IMAGES``) of the training split picks the best epoch and drives early stopping, so
  the eval split is never seen before validate. The embedded set is written as PNG files under
  ``data/images/``; records hold paths relative to the data stage folder.
- merge: a LoRA adapter folded into the weights (max |logit diff| adapter vs merged on eval images),
  or the whole trained model copied and reloaded (the same check).
- export: the main preset and each ``export.extra`` preset, parity-checked on eval images; LiteRT
  full-integer presets calibrate on training images.
- quantize: ONNX int8 static QDQ (per-channel weights, MinMax / Entropy / Percentile activation
  ranges) calibrated on training images, then top-1 on the eval split vs its input.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np

from edgeft.errors import ConfigError, DataError, ParityError

log = logging.getLogger(__name__)

FIELDS = ("image", "label")
SAMPLE_IMAGES = 64  # eval images for the merge / export parity checks
CALIBRATION_IMAGES = 200  # training images for int8 calibration
VAL_IMAGES = 200  # tail of the training split used to pick the best epoch (never the eval split)
IMAGE_OP_TYPES = ["Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "ReduceMean", "AveragePool"]


def data(d, base_dir: Path, tmp: Path) -> tuple[list[dict], list[dict], dict]:
    """(train, eval, source) image records of ``d`` (the recipe's ``data.images``; relative paths from
    ``base_dir``); the embedded set is written under ``tmp/images``."""
    from edgeft.data import images

    if d is None:
        raise ConfigError("objective image-classify needs data.images (embedded: digits, or train: a folder / file)")

    def path(rel: str) -> Path:
        return Path(rel) if Path(rel).is_absolute() else base_dir / rel

    if d.embedded is not None:
        rows = images.digits_records(tmp / "images")
        for r in rows:  # relative to the data stage folder, which tmp becomes
            r["image"] = str(Path(r["image"]).relative_to(tmp.resolve()))
        source = {"embedded": d.embedded, "images": len(rows)}
    else:
        rows = images.records(path(d.train), d.image_field, d.label_field)
        source = {"train": d.train, "images": len(rows)}
    if d.eval is not None:
        ev = images.records(path(d.eval), d.image_field, d.label_field)
        train = rows[:d.n_train] if d.n_train else rows
        source["eval"] = d.eval
    else:
        order = list(range(len(rows)))
        random.Random(d.seed).shuffle(order)
        k = d.n_eval if d.n_eval is not None else max(1, round(len(rows) * d.eval_fraction))
        if k >= len(rows):
            raise DataError(f"data.images: holding out {k} eval images leaves none of the {len(rows)} for training")
        ev = [rows[i] for i in order[:k]]
        train = [rows[i] for i in order[k:]]
        train = train[:d.n_train] if d.n_train else train
        source["split"] = {"n_eval": len(ev), "n_train": len(train), "seed": d.seed}
    for split, recs in (("train", train), ("eval", ev)):
        resolved = [{**r, "image": str(tmp / r["image"]) if not Path(r["image"]).is_absolute() else r["image"]}
                    for r in recs]
        images.check_images(resolved, f"data.images ({split} split)")
    return train, ev, source


def absolute(data_dir: Path, recs: list[dict]) -> list[dict]:
    """Records of the data stage folder ``data_dir`` with absolute image paths."""
    return [{**r, "image": str(data_dir / r["image"]) if not Path(r["image"]).is_absolute() else r["image"]}
            for r in recs]


def finetune(model_path: Path, train: list[dict], tmp: Path, work: Path, cfg, base_dir: Path) -> dict:
    """Fine-tune on ``train`` but its last images, which pick the epoch (``cfg``: the recipe's ``finetune``)."""
    from edgeft.finetune import finetune as run_finetune

    n_val = min(VAL_IMAGES, max(1, len(train) // 10))
    fit, val = train[:-n_val], train[-n_val:]
    if cfg.image.teacher and not Path(cfg.image.teacher).is_absolute():  # relative to the recipe file
        cfg = cfg.model_copy(update={"image": cfg.image.model_copy(
            update={"teacher": str(base_dir / cfg.image.teacher)})})
    metrics = run_finetune(model_path, fit, val, tmp, cfg, work_dir=work)
    metrics["validation_split"] = {"images": len(val), "from": "the last images of the training split"}
    return metrics


def pixels(model_dir: Path, recs: list[dict]) -> np.ndarray:
    from edgeft.data.images import batch
    from edgeft.models.vision import preprocessing

    return batch([r["image"] for r in recs], preprocessing(model_dir))


def merge(finetune_dir: Path, base_model: Path, tmp: Path, eval_records: list[dict], tol: float) -> dict:
    """Fold a LoRA adapter into the weights, or copy the whole trained model; check logits on eval images."""
    ev = eval_records[:SAMPLE_IMAGES]
    if (finetune_dir / "adapter").is_dir():
        return merge_adapter(finetune_dir / "adapter", base_model, tmp, ev, tol)
    return copy_model(finetune_dir / "model", tmp, ev, tol)


def _check_merge(before: np.ndarray, after: np.ndarray, tol: float, how: str) -> dict:
    diff = float(np.abs(after - before).max())
    if diff > tol:
        raise ParityError(f"merge: max |logit diff| trained vs merged model {diff:.3g} on {len(before)} eval images, "
                          f"over merge.tolerance {tol:g}")
    log.info("merge (image classifier): %s; max |logit diff| %.3g on %d eval images", how, diff, len(before))
    return {"how": how, "max_abs_diff": diff, "tolerance": tol, "images": int(len(before)),
            "label_agreement": float((after.argmax(-1) == before.argmax(-1)).mean())}


def merge_adapter(adapter: Path, base: Path, out: Path, recs: list[dict], tol: float) -> dict:
    """LoRA adapter + its base -> one folder of merged weights (EfficientNet-Lite or HF image model)."""
    from edgeft.data.images import batch
    from edgeft.finetune.objectives.image_classify import copy_preprocessor, load_adapter_model, predict
    from edgeft.models.vision import load_image_classifier, preprocessing, save_image_classifier

    peft_model, labels = load_adapter_model(adapter, base)
    inner = peft_model.get_base_model()
    pp = inner.config.preprocessing if hasattr(inner, "_blocks") else preprocessing(base)  # Lite: the trained size
    x = batch([r["image"] for r in recs], pp)
    before = predict(peft_model, x)
    save_image_classifier(peft_model.merge_and_unload().eval(), out, labels)
    copy_preprocessor(base, out)
    return _check_merge(before, predict(load_image_classifier(out), x), tol, "lora adapter folded into the weights")


def copy_model(model_dir: Path, out: Path, recs: list[dict], tol: float) -> dict:
    """A whole trained model copied as the merged model (reloaded from the copy for the check)."""
    from edgeft.finetune.objectives.image_classify import predict
    from edgeft.models.vision import load_image_classifier

    for f in model_dir.iterdir():
        if f.is_file() and f.name != "edgeft_method.json":
            shutil.copy2(f, out / f.name)
    x = pixels(out, recs)
    return _check_merge(predict(load_image_classifier(model_dir), x), predict(load_image_classifier(out), x), tol,
                        "whole model copied")


def export(merged: Path, tmp: Path, e, preset, main_name: str, eval_records: list[dict],
           train_records: list[dict]) -> dict:
    """The main preset of ``e`` (the recipe's ``export``) into ``tmp`` as ``main_name``, each extra into
    ``tmp/<preset>``; ``preset(name)`` loads a preset."""
    from edgeft.exporters import export as export_model

    sample = pixels(merged, eval_records[:SAMPLE_IMAGES])
    calib = None
    if any(preset(n).format == "tflite" for n in e.extra):
        calib = pixels(merged, train_records[:CALIBRATION_IMAGES])
    rep = export_model(merged, tmp, preset=preset(e.preset), name=main_name, tolerance=e.tolerance,
                       sample_images=sample)
    if e.extra:
        rep["extra"] = {name: export_model(merged, tmp / name, preset=preset(name), name=name,
                                           tolerance=e.tolerance, sample_images=sample, calibration_images=calib)
                        for name in e.extra}
    return rep


def quantize(src: Path, merged: Path, tmp: Path, specs, eval_records: list[dict], train_records: list[dict]) -> dict:
    """Each ONNX scheme of ``specs`` (the recipe's ``quantize``) on the exported graph in ``src``, calibrated on
    training images; top-1 on eval vs its input."""
    from edgeft.artifacts import Artifact, size_of
    from edgeft.config.schema import Goal
    from edgeft.finetune.objectives.classify import label_ids
    from edgeft.metrics import gate
    from edgeft.metrics.classify import agreement, scores
    from edgeft.quantize import SCHEMES, describe_output, scheme_options
    from edgeft.runtime.vision import ImageRuntime, read_meta

    exported = Artifact.load(src, "export")
    meta = read_meta(src)
    if exported.format != "onnx":
        raise ConfigError(f"quantize: image schemes quantize an ONNX export; export.preset is {exported.producer} "
                          f"({exported.format}); use onnx-image, and export.extra for LiteRT int8")
    x_eval = pixels(merged, eval_records)
    gold = np.asarray(label_ids(eval_records, meta["labels"], "eval"))
    n_labels = len(meta["labels"])
    calib = pixels(merged, train_records[:CALIBRATION_IMAGES])
    ref = ImageRuntime(src, "onnx", 2).logits(x_eval)
    ref_acc = scores(ref.argmax(-1), gold, n_labels)["accuracy"]
    out = {}
    for q in specs:
        s = SCHEMES.get(q.scheme, "quantize.scheme")
        if s.input_format != "onnx" or s.int8_mode not in ("static", "full-integer"):
            raise ConfigError(f"quantize.{q.name}: scheme {q.scheme} does not apply to image classifiers; use "
                              "int8-static (QDQ, calibrated on training images)")
        options = dict(q.options)
        options.setdefault("op_types_to_quantize", IMAGE_OP_TYPES)
        options.setdefault("weight_matmuls_only", False)
        opts = scheme_options(q.scheme, options)
        dest = tmp / q.name
        dest.mkdir()
        info = s.apply(src / "model.onnx", dest / "model.onnx", calib, opts)
        (dest / "image.json").write_text(json.dumps({**meta, "scheme": q.scheme}, indent=2))
        got = ImageRuntime(dest, "onnx", 2).logits(x_eval)
        acc = scores(got.argmax(-1), gold, n_labels)["accuracy"]
        rep = {"scheme": q.scheme, "options": opts.model_dump(), "info": info,
               "size_bytes": size_of(dest, s.output_format), "input_size_bytes": exported.size_bytes,
               "accuracy": {"input": ref_acc, "output": acc, "drop": ref_acc - acc, "images": int(len(eval_records)),
                            "label_agreement": agreement(ref, got)["label_agreement"]}}
        (dest / "quantize_report.json").write_text(json.dumps(rep, indent=2))
        describe_output(dest, q.scheme, opts, src, q.name)
        log.info("quantize %s (%s): top-1 %.4f vs %.4f input, %.1f MB", q.name, q.scheme, acc, ref_acc,
                 rep["size_bytes"] / 2**20)
        gate.raise_failed(f"quantize.{q.name}", gate.quality_gates(
            q.name, {"accuracy": acc}, {"accuracy": ref_acc}, {"accuracy": Goal.model_construct(
                max_degradation=q.max_accuracy_drop)}, reference_name="input"),
            f"top-1 on {len(eval_records)} eval images, over max_accuracy_drop")
        out[q.name] = rep
    return out

