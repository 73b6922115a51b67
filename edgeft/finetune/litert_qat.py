"""Quantization-aware steps for a full-integer LiteRT classifier: every activation int8, as the graph runs it.

``finetune.litert_qat`` (objective ``classify``, BERT-family models, after the float fine-tune) trains the
adapter on for a few more steps through a forward that simulates the full-integer int8 graph of a
``litert-int8-*`` preset. The forward is the export's own module (:func:`edgeft.exporters.litert.edge_module`
with the preset's options: embeddings looked up outside, tanh-form GELU, decomposed LayerNorm, the preset's
softmax form; attention as matrix products, which compute the same sums as the Edge TPU form's MUL + SUM),
and every tensor it computes is rounded as the int8 graph rounds it:

- each op's float output per tensor, asymmetric int8, over the [min, max] range (0 included) that the
  export's calibration records: min/max over the first ``calibration_examples`` training texts at the
  static sequence length, recomputed every ``recalibrate_every`` steps as the weights move;
- SOFTMAX and LOGISTIC outputs on TFLite's fixed int8 grid (scale 1/256, zero point -128), TANH on 1/128;
- every linear weight per output channel, symmetric int8 in [-127, 127], with LoRA's update merged into
  it first (the export quantizes the merged weight);
- straight-through gradients, zero outside the range (``torch.fake_quantize_per_tensor_affine``).

Only the adapter and the head train, so the fine-tune still produces an adapter; merge, export and
calibration then run as for any other fine-tune. Each evaluation scores the eval split through the
simulated int8 forward; the steps with the lowest simulated eval loss are kept.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Sequence

import numpy as np

from edgeft.errors import ConfigError, UnsupportedError

log = logging.getLogger(__name__)

# Ops that move or select values without computing new ones: the int8 graph keeps their input's scale.
_SAME_SCALE = {"view", "reshape", "transpose", "permute", "contiguous", "unsqueeze", "squeeze", "expand",
               "expand_as", "__getitem__", "split", "chunk", "flatten", "t", "detach", "clone", "to", "float",
               "type_as"}
METHODS = ("lora", "full", "bitfit", "freeze", "gradual-unfreeze")  # weights the simulation rounds as merged
# TFLite's fixed output grids (int8): SOFTMAX and LOGISTIC [0, 1), TANH [-1, 1).
_FIXED = {"softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128), "tanh": (1 / 128, 0)}


def _fake_int8_mode():
    """A ``TorchFunctionMode`` that rounds each op's float output to int8 (see the module docstring)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class FakeInt8(TorchFunctionMode):
        def __init__(self, ranges: list | None) -> None:
            super().__init__()
            self.ranges = ranges if ranges is not None else []  # per site, in call order: [min, max]
            self.calibrating = ranges is None
            self.site = 0
            self.paused = False

        def act(self, out, name: str):
            if name in _FIXED:
                scale, zp = _FIXED[name]
                return torch.fake_quantize_per_tensor_affine(out, scale, zp, -128, 127)
            i, self.site = self.site, self.site + 1
            if self.calibrating:
                lo, hi = float(out.detach().min()), float(out.detach().max())
                if i == len(self.ranges):
                    self.ranges.append([lo, hi])
                else:
                    r = self.ranges[i]
                    r[0], r[1] = min(r[0], lo), max(r[1], hi)
                return out
            if i >= len(self.ranges):
                raise UnsupportedError("finetune.litert_qat: the forward computed more tensors than calibration "
                                       "saw; it must be the same graph every call")
            lo, hi = min(self.ranges[i][0], 0.0), max(self.ranges[i][1], 0.0)
            scale = max((hi - lo) / 255.0, 1e-8)
            zp = int(min(127, max(-128, round(-128 - lo / scale))))
            return torch.fake_quantize_per_tensor_affine(out, scale, zp, -128, 127)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if self.paused:
                return func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            if name == "linear" and not self.calibrating:  # weight: per output channel, symmetric, [-127, 127]
                w = args[1]
                scale = (w.detach().abs().amax(dim=1) / 127.0).clamp_min(1e-12)
                wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                            0, -127, 127)
                args = (args[0], wq, *args[2:])
            if name == "rsqrt":  # an input rounded to 0 saturates (the int8 kernel's table does too); a finite
                # value keeps the backward free of inf * 0
                args = (args[0].clamp_min(1e-12), *args[1:])
            out = func(*args, **kwargs)
            if (name in _SAME_SCALE or not isinstance(out, torch.Tensor) or not out.is_floating_point()
                    or out.dim() == 0):
                return out
            return self.act(out, name)

    return FakeInt8


class _MergedLoRA:
    """Patches each PEFT LoRA linear to compute ``F.linear(x, W + ΔW, b)``: one weight, rounded as the export rounds
    the merged model's (the update computed with the rounding paused)."""

    def __init__(self, model, mode) -> None:
        self.layers = [m for m in model.modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")]
        self.mode = mode

    def __enter__(self):
        import torch.nn.functional as F

        for m in self.layers:
            def forward(x, *args, _m=m, **kwargs):
                self.mode.paused = True
                try:
                    w = _m.base_layer.weight
                    for name in _m.active_adapters:
                        if name in _m.lora_A:
                            w = w + _m.get_delta_weight(name)
                finally:
                    self.mode.paused = False
                return F.linear(x, w, _m.base_layer.bias)

            m.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for m in self.layers:
            del m.forward


def check(cfg) -> None:
    """One-line errors for a ``finetune.litert_qat`` this fine-tune cannot run."""
    if cfg.objective != "classify":
        raise ConfigError(f"finetune.litert_qat with objective {cfg.objective}: it simulates a full-integer LiteRT "
                          "classifier (objective classify); for images use finetune.image.qat, for int4 LMs "
                          "finetune.qat, or remove finetune.litert_qat")
    if cfg.method not in METHODS:
        raise UnsupportedError(f"finetune.litert_qat with method {cfg.method}: the simulation rounds plain or LoRA-merged "
                               f"linear weights; use one of {', '.join(METHODS)} or remove finetune.litert_qat")
    if cfg.processes > 1:
        raise UnsupportedError(f"finetune.litert_qat with finetune.processes={cfg.processes}: its steps run in one "
                               "process; set processes: 1")
    _options(cfg.litert_qat.preset)


def _options(preset: str):
    from edgeft.config.loader import load_preset
    from edgeft.exporters.litert import LiteRTOptions

    p = load_preset(preset)
    if p.format != "tflite":
        raise ConfigError(f"finetune.litert_qat.preset is {preset!r}, a {p.format} preset; name a full-integer "
                          "LiteRT preset (litert-int8-full or litert-int8-edgetpu)")
    opts = LiteRTOptions(**dict(p.options))
    if opts.quantize != "full":
        raise ConfigError(f"finetune.litert_qat.preset {preset!r} is not full-integer (quantize: {opts.quantize}); "
                          "name litert-int8-full or litert-int8-edgetpu")
    # The simulated forward runs batches: attention as matrix products and linears as linears compute the sums
    # the Edge TPU form's MUL + SUM and 1x1 convolutions compute, rounded at the same op outputs.
    return opts.model_copy(update={"attention": "matmul", "linear": "fc"})


class Int8Simulation:
    """``model``'s forward as the full-integer graph of preset options ``opts`` computes it (module docstring):
    :meth:`calibrate` records the activation ranges, :meth:`logits` computes through the rounded forward (with
    gradients unless under ``no_grad``)."""

    def __init__(self, model, opts, tokenizer, seq: int) -> None:
        from edgeft.exporters.litert import edge_module

        self.model, self.tokenizer, self.seq = model, tokenizer, seq
        self.edge = edge_module(model, opts)
        self.mode_class = _fake_int8_mode()

    def encode(self, texts: Sequence[str]):
        from edgeft.runtime.litert import encode_rows

        return encode_rows(self.tokenizer, [str(t) for t in texts], self.seq)

    def _forward(self, mode, ids, mask):
        import torch

        ids, mask = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask)
        with torch.no_grad():
            emb = self.edge.embed(ids)
        mode.site = 0
        x = mode.act(emb, "input")  # the graph's int8 input (outside the mode: act's own ops are not sites)
        with mode, _MergedLoRA(self.model, mode):
            return self.edge(x, mask)

    def calibrate(self, ids, mask, batch: int = 32) -> list:
        """[min, max] of every rounded tensor over the rows, in the forward's call order."""
        import torch

        mode = self.mode_class(None)
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                self._forward(mode, ids[i:i + batch], mask[i:i + batch])
        return mode.ranges

    def logits(self, ids, mask, ranges: list):
        """Logits of the rows through the rounded forward. The rows are cut to their longest text: the padding
        only widens the ranges, which :meth:`calibrate` records at the graph's full length."""
        n = max(1, int(np.asarray(mask).sum(1).max()))
        return self._forward(self.mode_class(ranges), ids[:, :n], mask[:, :n])


def train(model, tokenizer, train_records: Sequence[dict], eval_records: Sequence[dict], gold_train: Sequence[int],
          gold_eval: Sequence[int], cfg, seq: int) -> dict:
    """Quantization-aware steps on ``model`` (a PEFT sequence classifier, in place); returns what was done."""
    # Over 80 lines: a second, small training loop (calibrate, steps, periodic re-calibration and eval, best kept)
    # on the simulated int8 forward; its parts share the ranges and the optimizer.
    import torch

    from edgeft.exporters.litert import BERT_TYPES

    q = cfg.litert_qat
    t0 = time.perf_counter()
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in BERT_TYPES:
        raise UnsupportedError(f"finetune.litert_qat: the model is {kind!r}; the LiteRT classifier export (and so its "
                               f"simulation) covers {', '.join(BERT_TYPES)}; remove finetune.litert_qat")
    sim = Int8Simulation(model, _options(q.preset), tokenizer, seq)
    ids_tr, mask_tr = sim.encode([r["text"] for r in train_records])
    ids_ev, mask_ev = sim.encode([r["text"] for r in eval_records])
    y_tr, y_ev = torch.as_tensor(np.asarray(gold_train)), torch.as_tensor(np.asarray(gold_eval))
    n_cal = min(q.calibration_examples, len(ids_tr))

    def calibrate() -> list:
        return sim.calibrate(ids_tr[:n_cal], mask_tr[:n_cal])

    def evaluate(ranges) -> dict:
        with torch.no_grad():
            logits = torch.cat([sim.logits(ids_ev[i:i + 64], mask_ev[i:i + 64], ranges)
                                for i in range(0, len(ids_ev), 64)])
        return {"eval_loss": float(torch.nn.functional.cross_entropy(logits, y_ev)),
                "accuracy": float((logits.argmax(-1) == y_ev).float().mean())}

    model.eval()  # no dropout: the graph has none
    ranges = calibrate()
    before = evaluate(ranges)
    log.info("litert QAT (%s): simulated int8 eval accuracy %.4f before, %d tensors rounded", q.preset,
             before["accuracy"], len(ranges))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnsupportedError("finetune.litert_qat: the model has no trainable parameters")
    lr0 = q.learning_rate or cfg.learning_rate / 10
    opt = torch.optim.AdamW(params, lr=lr0, weight_decay=0.0)
    order = list(range(len(ids_tr)))
    rng = random.Random(cfg.seed + 2000)
    rng.shuffle(order)

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    best = {"step": 0, **before, "state": snapshot()}  # step 0: the float fine-tune's weights
    history = []
    bs, pos = cfg.batch_size, 0
    for step in range(1, q.steps + 1):
        if pos + bs > len(order):
            rng.shuffle(order)
            pos = 0
        idx = order[pos:pos + bs]
        pos += bs
        loss = torch.nn.functional.cross_entropy(sim.logits(ids_tr[idx], mask_tr[idx], ranges), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not torch.isfinite(norm):
            raise UnsupportedError(f"finetune.litert_qat: the gradient at step {step} is not finite; the simulated "
                                   "int8 forward has an op whose backward breaks on rounded inputs")
        for g in opt.param_groups:
            g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / q.steps))
        opt.step()
        if step % q.recalibrate_every == 0 or step == q.steps:
            ranges = calibrate()
            ev = evaluate(ranges)
            history.append({"step": step, "train_loss": loss.item(), **ev})
            log.info("litert QAT step %d: train loss %.4f, simulated int8 eval loss %.4f, accuracy %.4f", step,
                     loss.item(), ev["eval_loss"], ev["accuracy"])
            if ev["eval_loss"] < best["eval_loss"]:
                best = {"step": step, **ev, "state": snapshot()}
    with torch.no_grad():
        for k, v in model.named_parameters():
            if k in best["state"]:
                v.copy_(best["state"][k])
    return {"preset": q.preset, "steps": q.steps, "learning_rate": lr0, "tensors_rounded": len(ranges),
            "kept_step": best["step"], "accuracy_int8_simulated_before": before["accuracy"],
            "accuracy_int8_simulated": best["accuracy"], "eval_loss_int8_simulated_before": before["eval_loss"],
            "eval_loss_int8_simulated": best["eval_loss"], "history": history,
            "seconds": round(time.perf_counter() - t0, 1)}
