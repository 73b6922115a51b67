"""Image-classify: an image classifier (EfficientNet-Lite or an HF image model) fine-tuned with a new head.

Records are ``{"image": path, "label": name}``. The new head has one logit per training label
(labels in :func:`edgeft.finetune.objectives.classify.label_list` order, written as ``id2label``).
Methods, named as for text models:

- ``full``: every weight trains;
- ``freeze``: feature extraction. With ``freeze.top_blocks: 0`` the backbone is frozen (BatchNorm
  statistics too) and only the head trains, on features computed once per image (a linear probe);
  with ``top_blocks: N`` the top N blocks train as well;
- ``gradual-unfreeze``: the head first, then one more block from the top every
  ``unfreeze.every_steps`` steps (default: the schedule spread evenly over training);
- ``bitfit``: bias terms, BatchNorm/LayerNorm affine parameters (a convolution net's biases) and the head;
- ``lora``: PEFT LoRA on the linear and 1x1 convolution layers (ViT: attention and MLP linears), the
  head fully trained; the merge stage folds the adapter into the weights.

Training is a plain PyTorch loop (AdamW, warm-up then cosine, gradient clipping): random resized
crop and (``finetune.image.flip``) horizontal flip on the training images, the model's own center
crop on the eval split. Each epoch is evaluated (top-1, top-5, per-class F1, loss); the best epoch's
weights are kept, early stopping watches the eval loss, and an interrupted run resumes from its last
epoch checkpoint in ``work_dir``.

``finetune.image.qat`` (method ``full``) adds quantization-aware epochs after the float ones: the model
is captured with ``torch.export``, prepared by torchao's ``prepare_qat_pt2e`` with the XNNPACK
quantizer's int8 configuration (the full-integer targets' grid: per-channel symmetric weights,
per-tensor affine activations, BatchNorm folded into the convolutions as it will be on the device), and
trained on; each QAT epoch is scored with the fake-quantized model. The float weights that came out of
it go on to the export and quantize stages like any other, which calibrate their own int8 graphs.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ConfigError, UnsupportedError
from edgeft.finetune.registry import OBJECTIVES, Objective
from edgeft.metrics.classify import topk_scores

log = logging.getLogger(__name__)

FIELDS = ("image", "label")
METHODS_SUPPORTED = ("full", "freeze", "gradual-unfreeze", "bitfit", "lora")
EVAL_BATCH = 64


def blocks_of(model) -> list:
    """The backbone's blocks, bottom to top (what freeze / gradual-unfreeze count), and the head module."""
    from torch import nn

    if hasattr(model, "_blocks"):  # EfficientNet-Lite: the MBConv blocks, then the 1x1 head conv + its norm
        tail = nn.ModuleList([model._conv_head, model._bn1])
        return [*model._blocks, tail]
    inner = getattr(model, "inner", model)
    lists = [m for m in inner.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UnsupportedError(f"{type(inner).__name__}: no block list found to freeze or unfreeze; use method "
                               "full, bitfit or lora")
    return list(max(lists, key=len))


def _set_trainable(model, method: str, cfg) -> dict:
    """``requires_grad`` per the method; returns what the method needs at train time."""
    from torch import nn

    head = model.head_module()
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = False
    for p in head.parameters():
        p.requires_grad = True
    state: dict = {"frozen_norm": [], "blocks": []}
    if method == "full":
        for p in model.parameters():
            p.requires_grad = True
    elif method == "freeze":
        n = cfg.freeze.top_blocks
        blocks = blocks_of(model)
        if n > len(blocks):
            raise ConfigError(f"finetune.freeze.top_blocks: {n} > the model's {len(blocks)} blocks; use at most "
                              f"{len(blocks)} (or method full)")
        for b in blocks[len(blocks) - n:] if n else []:
            for p in b.parameters():
                p.requires_grad = True
        state["probe"] = n == 0
    elif method == "bitfit":
        for name, m in model.named_modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                for p in m.parameters():
                    p.requires_grad = True
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                m.bias.requires_grad = True
    elif method == "gradual-unfreeze":
        state["blocks"] = blocks_of(model)
    # frozen BatchNorm layers keep their ImageNet statistics: they run in eval mode while training
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
            state["frozen_norm"].append(m)
    state["head_ids"] = head_ids
    return state


def _lora_wrap(model, cfg):
    """PEFT LoRA on the linear and 1x1 convolution layers; the head trains fully (``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    head = model.head_module()
    head_name = next(n for n, m in model.named_modules() if m is head)
    tm = cfg.lora.target_modules
    if tm == "all-linear":
        tm = [n for n, m in model.named_modules()
              if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1))
              and not n.startswith(head_name)]
    if not tm:
        raise ConfigError("finetune.lora.target_modules: no linear or 1x1 convolution layers to adapt")
    pc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=tm,
                    modules_to_save=[head_name])
    return get_peft_model(model, pc)


def _pixels(recs: Sequence[dict], images: dict, pp, rng: random.Random | None, cfg_image) -> np.ndarray:
    from edgeft.data.images import augmented_input, to_input

    if rng is None:
        return np.stack([to_input(images[r["image"]], pp) for r in recs])
    return np.stack([augmented_input(images[r["image"]], pp, rng, tuple(cfg_image.crop_scale), flip=cfg_image.flip)
                     for r in recs])


def predict(model, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _evaluate(model, x: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    was = model.training
    model.eval()
    scores = _scores(model, x, gold, n_labels)
    model.train(was)
    return scores


def _scores(model, x: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """Eval loss and top-k of ``model`` as it is (an exported QAT graph cannot be switched with ``.eval()``)."""
    import torch

    logits = predict(model, x)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(gold)))
    return {"eval_loss": loss, **topk_scores(logits, gold, n_labels)}


def _train_loss(logits, y, idx, loss_fn, soft, image_cfg):
    """Cross-entropy on the labels; with a teacher, mixed with the KL to its softened distribution (T^2-scaled)."""
    import torch

    loss = loss_fn(logits, y)
    if soft is None:
        return loss
    t = image_cfg.distill_temperature
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits / t, -1), soft[idx], reduction="batchmean")
    return image_cfg.distill_alpha * loss + (1 - image_cfg.distill_alpha) * t * t * kl


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def finetune_images(model_path: Path, train: list[dict], eval: list[dict], out_dir: Path, cfg,
                    work_dir: Path | None = None) -> dict:
    """Fine-tune the image classifier at ``model_path``; write ``out_dir/model`` (or ``adapter``) + metrics.json."""
    import torch

    from edgeft.data.images import open_image
    from edgeft.fileio import atomic_write_text
    from edgeft.finetune.objectives.classify import label_ids, label_list
    from edgeft.models.vision import parameter_count

    # Over 80 lines: one training loop whose state (step, best epoch, patience, unfreeze schedule, checkpoint) runs
    # across epochs; the parts that stand alone (model, resume, unfreeze, evaluation, QAT, save) are helpers.
    method = cfg.method
    if cfg.image.qat is not None and method != "full":
        raise UnsupportedError(f"finetune.image.qat: quantization-aware epochs are built for method full (every "
                               f"weight trains under fake quantization), not {method!r}; use method: full or remove "
                               "finetune.image.qat")
    if method not in METHODS_SUPPORTED:
        raise UnsupportedError(f"finetune.method {method!r} is not available for objective image-classify; "
                               f"use one of: {', '.join(METHODS_SUPPORTED)}")
    out_dir, t0 = Path(out_dir), time.perf_counter()
    work_dir = Path(work_dir) if work_dir else out_dir.parent / (out_dir.name + ".work")
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    labels = label_list(train)
    gold_train = np.asarray(label_ids(train, labels, "train"), np.int64)
    gold_eval = np.asarray(label_ids(eval, labels, "eval"), np.int64)
    model, pp = _build_model(model_path, cfg.image, len(labels))
    size = pp.size
    images = {r["image"]: open_image(r["image"]) for r in [*train, *eval]}
    eval_x = _pixels(eval, images, pp, None, cfg.image)
    params_total = parameter_count(model)
    if method == "lora":  # the base stays frozen, BatchNorm statistics too: the adapter file holds no buffers
        state = {"frozen_norm": [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)], "blocks": []}
    else:
        state = _set_trainable(model, method, cfg)
    if method == "lora":
        model = _lora_wrap(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    epochs = math.ceil(total / steps_per_epoch)
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    warmup = round(cfg.warmup_ratio * total)
    log.info("image-classify: %s on %d images (%d classes, %dx%d), %d steps, %d of %d parameters trainable",
             method, len(train), len(labels), size, size, total, n_trainable, params_total)
    # linear probe: the frozen backbone's pooled features once per image (no augmentation); models without a
    # features() method run the frozen backbone every step instead
    probe = state.get("probe", False) and hasattr(model, "features")
    feats_train = feats_eval = None
    if probe:
        feats_train = torch.from_numpy(predict(model.features, _pixels(train, images, pp, None, cfg.image)))
        feats_eval = torch.from_numpy(predict(model.features, eval_x))
    ckpt = work_dir / "checkpoint.pt"
    history, step, start_epoch, best = _resume(ckpt, model, opt)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.image.label_smoothing)
    soft = _teacher_targets(cfg.image, train, labels, images) if cfg.image.teacher else None
    patience = cfg.early_stopping.patience if cfg.early_stopping else None
    bad = 0
    for epoch in range(start_epoch, epochs):
        model.train()
        for m in state["frozen_norm"]:
            m.eval()
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            if state["blocks"]:  # gradual unfreeze: head first, then one block more from the top per interval
                _unfreeze(state, cfg.unfreeze, step, total, opt)
            idx = order[i:i + cfg.batch_size]
            y = torch.from_numpy(gold_train[idx])
            if probe:
                logits = model.head_module()(feats_train[idx])
            else:
                x = torch.from_numpy(_pixels([train[j] for j in idx], images, pp, rng, cfg.image))
                logits = model(x)
            loss = _train_loss(logits, y, idx, loss_fn, soft, cfg.image)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.max_grad_norm)
            lr = cfg.learning_rate * _schedule(step, total, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            step += 1
            losses.append(loss.item())
        if probe:
            model.eval()
            with torch.inference_mode():
                logits = model.head_module()(feats_eval).numpy()
            ev = {"eval_loss": float(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                                       torch.from_numpy(gold_eval))),
                  **topk_scores(logits, gold_eval, len(labels))}
        else:
            ev = _evaluate(model, eval_x, gold_eval, len(labels))
        row = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
               **{k: v for k, v in ev.items() if k != "per_class_f1"}}
        history.append(row)
        log.info("image-classify epoch %d: train loss %.4f, eval loss %.4f, top-1 %.4f", epoch + 1,
                 row["train_loss"] or float("nan"), ev["eval_loss"], ev["top1"])
        if best is None or ev["eval_loss"] < best["eval_loss"]:
            best, bad = {"epoch": epoch + 1, "eval_loss": ev["eval_loss"],
                         "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}, 0
        else:
            bad += 1
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch + 1,
                    "history": json.dumps(history), "best_epoch": best["epoch"], "best_loss": best["eval_loss"],
                    "best": best["state"]}, ckpt)
        if patience is not None and bad >= patience:
            log.info("image-classify: early stop after epoch %d (no eval-loss improvement for %d)", epoch + 1, bad)
            break
        if step >= total:
            break
    if best is not None:
        model.load_state_dict(best["state"])
    model.eval()
    qat = None
    if cfg.image.qat is not None:
        qat = _qat(model, cfg, train, images, pp, rng, gold_train, eval_x, gold_eval, len(labels), loss_fn, soft)
    final = (topk_scores(model.head_module()(feats_eval).detach().numpy(), gold_eval, len(labels)) if probe
             else _evaluate(model, eval_x, gold_eval, len(labels)))
    target = _save(model, method, out_dir, labels, model_path)
    metrics = {"objective": "image-classify", "method": method, "labels": labels, "image_size": size,
               **({"student_width": cfg.image.width} if cfg.image.width else {}),
               **({"teacher": str(cfg.image.teacher)} if cfg.image.teacher else {}),
               "trainable_params": n_trainable, "total_params": params_total, "steps": step,
               # gradual-unfreeze: what was trainable when training ended (blocks joined on the way)
               "trainable_params_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "best_epoch": best["epoch"] if best else None, "history": history,
               **({"qat": qat} if qat is not None else {}),
               "eval": {k: v for k, v in final.items()}, "seconds": round(time.perf_counter() - t0, 1),
               "n_train": len(train), "n_eval": len(eval), "base_model": str(model_path), "output": target.name}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _build_model(model_path: Path, image_cfg, n_labels: int):
    """(the classifier with a new head of ``n_labels``, its preprocessing): as loaded, or a width-reduced student
    from random weights (``image.width``), at ``image.size`` (EfficientNet-Lite only)."""
    from edgeft.models.vision import load_image_classifier, preprocessing

    model = load_image_classifier(model_path)
    pp = preprocessing(model_path)
    if image_cfg.width is not None:  # a width-reduced student, from random weights
        if not hasattr(model, "_blocks"):
            raise UnsupportedError("finetune.image.width: only EfficientNet-Lite models are width-scaled; remove it")
        from dataclasses import replace

        from edgeft.models.vision import lite_class, scaled

        model = lite_class()(scaled(replace(model.config, preprocessing=replace(pp)), image_cfg.width)).eval()
    size = image_cfg.size or pp.size
    if size != pp.size:
        if not hasattr(model, "_blocks"):
            raise UnsupportedError(f"finetune.image.size {size}: only EfficientNet-Lite models take another input "
                                   f"size; this model's is {pp.size} (remove finetune.image.size)")
        model.config.preprocessing.size = size
        pp = model.config.preprocessing
    model.replace_head(n_labels)
    return model, pp


def _resume(ckpt: Path, model, opt) -> tuple[list, int, int, dict | None]:
    """(history, step, first epoch, best epoch) from the epoch checkpoint ``ckpt`` loaded into ``model`` and
    ``opt``; a fresh start when there is none."""
    import torch

    if not ckpt.is_file():
        return [], 0, 0, None
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    step, start_epoch = int(saved["step"]), int(saved["epoch"])
    best = {"epoch": int(saved["best_epoch"]), "eval_loss": float(saved["best_loss"]), "state": saved["best"]}
    log.info("image-classify: resuming at epoch %d (step %d)", start_epoch, step)
    return json.loads(saved["history"]), step, start_epoch, best


def _unfreeze(state: dict, unfreeze_cfg, step: int, total: int, opt) -> None:
    """Gradual unfreeze: the blocks due at ``step`` (one more from the top per interval) join ``opt``, their norms
    train again."""
    blocks = state["blocks"]
    every = unfreeze_cfg.every_steps or max(1, total // (len(blocks) + 1))
    k = min(len(blocks), unfreeze_cfg.start - 1 + step // every)
    for b in blocks[len(blocks) - k:] if k else []:
        for p in b.parameters():
            if not p.requires_grad:
                p.requires_grad = True
                opt.add_param_group({"params": [p], "lr": opt.param_groups[0]["lr"]})
                for m in b.modules():
                    if m in state["frozen_norm"]:
                        state["frozen_norm"].remove(m)
                        m.train()


def _qat(model, cfg, train, images, pp, rng, gold_train, eval_x, gold_eval, n_labels, loss_fn, soft) -> dict:
    """Quantization-aware epochs on ``model`` (in place): PT2E fake quantization, the best QAT epoch's weights kept.

    Returns what was done: the per-epoch history (fake-quantized eval loss and top-1), the float and the
    fake-quantized top-1 before QAT, and which epoch was kept.
    """
    # Over 80 lines: the QAT epochs are a second training loop on the exported, fake-quantized graph (capture,
    # prepare, epochs, best epoch kept), sharing the training state of finetune_images.
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    q = cfg.image.qat
    t0 = time.perf_counter()
    size = pp.size
    example = (torch.from_numpy(eval_x[:2]) if len(eval_x) >= 2 else torch.zeros(2, 3, size, size),)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)  # training and eval batches of any size
    graph = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
    wmax = 2 ** (q.weight_bits - 1) - 1  # 8 bits: [-127, 127] (LiteRT); 7 bits: [-64, 63] (ORT reduce_range)
    wmin = -wmax if q.weight_bits == 8 else -wmax - 1
    grid = get_symmetric_quantization_config(is_per_channel=True, is_qat=True, weight_qmin=wmin, weight_qmax=wmax)
    quantizer = XNNPACKQuantizer().set_global(grid)
    prepared = prepare_qat_pt2e(graph, quantizer)
    names = set(model.state_dict())
    lost = sorted(k for k in names if k not in prepared.state_dict() and not k.endswith("num_batches_tracked"))
    if lost:  # the trained weights could not be carried back: fail before spending the epochs
        raise UnsupportedError(f"finetune.image.qat: the exported graph renames {len(lost)} weights of this model "
                               f"(e.g. {lost[0]}); QAT is not available for it, remove finetune.image.qat")
    move_exported_model_to_eval(prepared)
    float_top1 = _evaluate(model, eval_x, gold_eval, n_labels)["top1"]
    before = _scores(prepared, eval_x, gold_eval, n_labels)
    log.info("image-classify QAT: top-1 float %.4f, fake-quantized int8 %.4f before QAT", float_top1, before["top1"])
    lr0 = q.learning_rate or cfg.learning_rate / 10
    params = [p for p in prepared.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr0, weight_decay=0.0)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, math.ceil(q.epochs * per_epoch))
    history, step = [], 0
    best = {"epoch": 0, "eval_loss": before["eval_loss"], "state": None}
    for epoch in range(math.ceil(total / per_epoch)):
        move_exported_model_to_train(prepared)
        order = list(range(len(train)))
        random.Random(cfg.seed + 1000 + epoch).shuffle(order)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[i:i + cfg.batch_size]
            x = torch.from_numpy(_pixels([train[j] for j in idx], images, pp, rng, cfg.image))
            logits = prepared(x)
            loss = _train_loss(logits, torch.from_numpy(gold_train[idx]), idx, loss_fn, soft, cfg.image)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            for g in opt.param_groups:
                g["lr"] = lr0 * _schedule(step, total, 0)
            opt.step()
            step += 1
            losses.append(loss.item())
        move_exported_model_to_eval(prepared)
        ev = _scores(prepared, eval_x, gold_eval, n_labels)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
                        "eval_loss": ev["eval_loss"], "top1_fake_quant": ev["top1"]})
        log.info("image-classify QAT epoch %d: train loss %.4f, fake-quantized eval loss %.4f, top-1 %.4f", epoch + 1,
                 history[-1]["train_loss"] or float("nan"), ev["eval_loss"], ev["top1"])
        if ev["eval_loss"] < best["eval_loss"]:
            best = {"epoch": epoch + 1, "eval_loss": ev["eval_loss"],
                    "state": {k: v.detach().clone() for k, v in prepared.state_dict().items() if k in names}}
        if step >= total:
            break
    if best["state"] is not None:
        missing, _ = model.load_state_dict(best["state"], strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing:
            raise UnsupportedError(f"finetune.image.qat: {len(missing)} weights did not come back from the QAT graph "
                                   f"(e.g. {missing[0]})")
    model.eval()
    return {"epochs": q.epochs, "learning_rate": lr0, "weight_bits": q.weight_bits, "steps": step,
            "kept_epoch": best["epoch"],
            "top1_float_before": float_top1, "top1_fake_quant_before": before["top1"],
            "top1_fake_quant": history[best["epoch"] - 1]["top1_fake_quant"] if best["epoch"] else before["top1"],
            "history": history, "seconds": round(time.perf_counter() - t0, 1)}


def _teacher_targets(image_cfg, train: list[dict], labels: list[str], images: dict):
    """The teacher's softened class distribution per training image (its own preprocessing, no augmentation)."""
    import torch

    from edgeft.data.images import to_input
    from edgeft.models.vision import labels as model_labels, load_image_classifier, preprocessing

    teacher = Path(image_cfg.teacher)
    if not (teacher / "config.json").is_file():
        raise ConfigError(f"finetune.image.teacher: {teacher} is not an image classifier folder; run the teacher's "
                          "recipe first (its merge/ folder is the teacher)")
    if model_labels(teacher) != labels:
        raise ConfigError(f"finetune.image.teacher: {teacher} predicts {model_labels(teacher)[:10]}, the training "
                          f"split has {labels[:10]}; distil from a teacher trained on the same labels")
    model, pp = load_image_classifier(teacher), preprocessing(teacher)
    x = np.stack([to_input(images[r["image"]], pp) for r in train])
    logits = torch.from_numpy(predict(model, x))
    log.info("image-classify: distilling from %s (T=%g, alpha=%g) on %d training images", teacher,
             image_cfg.distill_temperature, image_cfg.distill_alpha, len(train))
    return torch.softmax(logits / image_cfg.distill_temperature, -1)


def _save(model, method: str, out_dir: Path, labels: list[str], base: Path) -> Path:
    from edgeft.finetune.registry import MARKER
    from edgeft.models.vision import save_image_classifier

    if method == "lora":
        target = out_dir / "adapter"
        model.save_pretrained(str(target))
        inner = model.get_base_model()
        (target / "edgeft_image_base.json").write_text(json.dumps({
            "base_model": str(base), "labels": labels,
            "image_size": inner.config.preprocessing.size if hasattr(inner, "_blocks") else None}))
    else:
        target = out_dir / "model"
        save_image_classifier(model, target, labels)
        copy_preprocessor(base, target)
    (target / MARKER).write_text(json.dumps({"method": method, "produces": target.name,
                                             "merge": "merge" if method == "lora" else "copy",
                                             "task": "image-cls"}, indent=2))
    return target


def copy_preprocessor(base: Path, target: Path) -> None:
    import shutil

    pp = Path(base) / "preprocessor_config.json"
    if pp.is_file():
        shutil.copy2(pp, target / pp.name)


def load_adapter_model(adapter: Path, base_model: Path | None = None):
    """Base classifier with its head resized to the adapter's labels, then the LoRA adapter on top (eval mode)."""
    from peft import PeftModel

    from edgeft.models.vision import load_image_classifier

    info = json.loads((Path(adapter) / "edgeft_image_base.json").read_text())
    base = load_image_classifier(Path(base_model or info["base_model"]))
    if info.get("image_size") and hasattr(base, "_blocks"):
        base.config.preprocessing.size = int(info["image_size"])
    base.replace_head(len(info["labels"]))
    return PeftModel.from_pretrained(base, str(adapter)).eval(), info["labels"]


def _not_through_text_loop(*args, **kwargs):
    raise UnsupportedError("objective image-classify trains through edgeft.finetune.finetune on an image "
                           "classifier folder (records with image and label)")


OBJECTIVES.register("image-classify")(Objective(
    "image-classify", "image classification with a new head (records: image path, label)", "image-cls", FIELDS,
    _not_through_text_loop))
