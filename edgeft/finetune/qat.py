"""Quantization-aware training for int4 (``finetune.qat``): train with the weights the int4 export will hold.

Post-training int4 erases several fine-tunes (docs/methods.md): the updates of BitFit, IA3 or a
full fine-tune are smaller than an int4 step, and rounding takes them back. With ``finetune.qat``
every targeted linear computes, while training, with its weight fake-quantized by torchao's
``IntxFakeQuantizer`` (int4 per group of ``group_size`` inputs, each group's [min, max] or symmetric:
see :mod:`edgeft.quantize.schemes.torchao_int4`; straight-through gradients), so the optimizer sees
the rounding and moves the weights (or the adapter) until the rounded model does the task. The export
then rounds with the same quantizer (quantize scheme ``int4-torchao``), so the int4 artifact computes
what training computed.

Which weight is fake-quantized is what the export will round:

- ``lora``: the *merged* weight ``W + scaling * B @ A`` (what the merge stage writes), so gradients
  reach A and B through the rounding. torchao's module swap (``QATConfig`` prepare) would replace
  the frozen base ``nn.Linear`` alone and train the adapter on top of a rounded base, a different
  model from the rounded merge that ships; so each PEFT LoRA layer's forward is replaced instead.
- ``ia3``: the base weight times the learned scaling vector (per input of a feed-forward layer, per
  output otherwise), which is what the IA3 merge folds into it.
- ``full``, ``freeze``, ``gradual-unfreeze``, ``bitfit``: the linear's own weight (trained or frozen:
  BitFit's biases and norm gains learn to compensate the rounding of frozen weights).

``grid: ort`` trains on ORT MatMulNBits' own symmetric RTN grid instead (the largest magnitude at
-8, nothing clipped; torchao's grid puts it at 7.5 steps and clips the positive side), rounded by
torchao's fake-quantize primitive; ``int4-rtn`` (symmetric) then exports it bit for bit.

The forward of each targeted module is replaced on the instance; parameters, their names and
``requires_grad`` are untouched, so checkpoints, ``save_pretrained`` and the merge see a plain model.
Targets: the linears of the transformer blocks whose input width divides into groups; not the LM
head or a classifier head (the export keeps those at int8 or fp32). ``activations: int8-dynamic``
also fake-quantizes each target's input per token (asymmetric int8, ExecuTorch 8da4w's activations).
``start_step`` trains in float first: fake quantization switches on at that optimizer step.

LoRA with dropout is refused (the merged-weight form has no per-input dropout), as are methods whose
result is not an exported weight on this grid (qlora: its merge reloads the base in fp32, not the
NF4 values it trained against; dora: its merge renormalizes each column by a learned magnitude).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from edgeft.config.schema import QAT_METHODS as SUPPORTED
from edgeft.errors import ConfigError, UnsupportedError

log = logging.getLogger(__name__)

HEAD_NAMES = ("lm_head", "score", "classifier", "pooler")


def check(cfg) -> None:
    """One-line errors for a ``finetune.qat`` the method cannot train."""
    if cfg.qat is None:
        return
    if cfg.method not in SUPPORTED:
        raise UnsupportedError(f"finetune.qat with method {cfg.method}: quantization-aware training is built for "
                               f"methods {', '.join(SUPPORTED)} (their merged weights are what int4 rounds); "
                               "use one of them or remove finetune.qat")
    if cfg.method == "lora" and cfg.lora.dropout > 0:
        raise ConfigError(f"finetune.qat with finetune.lora.dropout={cfg.lora.dropout}: QAT computes with the merged "
                          "weight, which has no dropout; set finetune.lora.dropout: 0")


@dataclass
class Installed:
    """The fake quantizers put on a model: switch them on/off, or take them off again."""

    quantizers: list = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    _restore: list[Callable[[], None]] = field(default_factory=list)

    def enable(self, on: bool) -> None:
        for fq in self.quantizers:
            fq.enabled = on

    def remove(self) -> None:
        for undo in self._restore:
            undo()
        self._restore.clear()


def _weight_quantizer(q):
    from edgeft.quantize.schemes.torchao_int4 import weight_quantizer

    return weight_quantizer(q.group_size, q.symmetric, q.grid)


def _activation_quantizer(q):
    if q.activations == "none":
        return None
    import torch
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    return IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))


def _lora_weight(layer) -> Callable:
    """The weight a PEFT LoRA layer computes with: base + scaling * B @ A for each active adapter, the base
    alone when adapters are disabled (DPO's reference) or already merged into it."""
    def weight():
        w = layer.get_base_layer().weight.float()
        if layer.disable_adapters or layer.merged:
            return w
        for name in layer.active_adapters:
            if name in layer.lora_A:
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                w = w + layer.scaling[name] * (b.float() @ a.float())
        return w
    return weight


def _ia3_weight(layer) -> tuple[Callable, Callable]:
    """(weight, bias) a PEFT IA3 layer computes with: the base weight scaled per input (feed-forward layers) or per
    output (and its bias with it), as the IA3 merge folds it."""
    def scaling():
        s = None
        if not (layer.disable_adapters or layer.merged):
            for name in layer.active_adapters:
                if name in layer.ia3_l:
                    s = layer.ia3_l[name].float().flatten() if s is None else s * layer.ia3_l[name].float().flatten()
        return s

    def weight():
        w, s = layer.get_base_layer().weight.float(), scaling()
        if s is None:
            return w
        return w * (s[None, :] if layer.is_feedforward else s[:, None])

    def bias():
        b, s = layer.get_base_layer().bias, scaling()
        return b if b is None or s is None or layer.is_feedforward else b * s
    return weight, bias


def _install(module, weight: Callable, bias: Callable, wfq, afq) -> Callable[[], None]:
    """Replace ``module``'s forward by a linear over ``wfq(weight())``. Without autograd (evaluation, greedy
    decoding) the fake-quantized weight is kept until a parameter of the module changes in place (an
    optimizer step bumps its version), so decoding does not round every weight again for every token."""
    import torch
    import torch.nn.functional as F

    params = list(module.parameters())
    cache: dict = {}

    def quantized_weight():
        if torch.is_grad_enabled():
            return wfq(weight())
        key = (wfq.enabled, tuple(p._version for p in params), tuple(id(p) for p in params),
               # PEFT layers: which adapters take part (DPO scores its reference with them disabled)
               getattr(module, "disable_adapters", False), getattr(module, "merged", False),
               tuple(getattr(module, "active_adapters", ())))
        if cache.get("key") != key:
            cache["key"], cache["w"] = key, wfq(weight())
        return cache["w"]

    def forward(x, *args, **kwargs):
        if afq is not None and wfq.enabled:
            x = afq(x)
        return F.linear(x, quantized_weight(), bias())

    module.forward = forward
    return lambda: module.__dict__.pop("forward", None)


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def _targets(model, q) -> list[tuple]:
    """(name, module, weight(), bias()) of each linear QAT rounds: LoRA and IA3 layers (their merged weight), plain
    ``nn.Linear`` s outside them; not the head, nor a linear whose input width does not divide into groups."""
    import torch

    from peft.tuners.ia3.layer import Linear as Ia3Linear
    from peft.tuners.lora.layer import Linear as LoraLinear

    inner = set()  # the base/A/B linears inside LoRA and IA3 layers: the PEFT layer computes them
    for mod in model.modules():
        if isinstance(mod, (LoraLinear, Ia3Linear)):
            inner.update(id(m) for m in mod.modules() if m is not mod)
    out = []
    for name, mod in model.named_modules():
        if _is_head(name) or id(mod) in inner:
            continue
        if isinstance(mod, LoraLinear):
            if any(getattr(mod, "use_dora", {}).values()):
                raise UnsupportedError(f"finetune.qat: {name} is a DoRA layer; QAT is built for plain LoRA: "
                                       "use method lora or remove finetune.qat")
            base = mod.get_base_layer()
            weight, bias, k = _lora_weight(mod), (lambda b=base: b.bias), base.in_features
        elif isinstance(mod, Ia3Linear):
            (weight, bias), k = _ia3_weight(mod), mod.get_base_layer().in_features
        elif type(mod) is torch.nn.Linear:
            weight, bias, k = (lambda m=mod: m.weight), (lambda m=mod: m.bias), mod.in_features
        else:
            continue
        if k % q.group_size:
            log.info("finetune.qat: %s left in float (%d inputs is not a multiple of group_size %d)",
                     name, k, q.group_size)
            continue
        out.append((name, mod, weight, bias))
    if not out:
        raise UnsupportedError("finetune.qat: the model has no linear layer to fake-quantize (no nn.Linear or LoRA "
                               f"layer outside the head whose input width divides by group_size {q.group_size})")
    return out


def prepare(model, q) -> Installed:
    """Put int4 fake quantization (``q``: a QatConfig) on ``model``'s targets; returns what was installed."""
    out = Installed()
    for name, mod, weight, bias in _targets(model, q):
        wfq, afq = _weight_quantizer(q), _activation_quantizer(q)
        out._restore.append(_install(mod, weight, bias, wfq, afq))
        out.quantizers += [wfq] + ([afq] if afq is not None else [])
        out.targets.append(name)
    out.enable(q.start_step == 0)
    log.info("finetune.qat: %d linears train on %s int4 grid (groups of %d%s)%s", len(out.targets),
             "ORT's" if q.grid == "ort" else "torchao's", q.group_size,
             ", int8 activations per token" if q.activations != "none" else "",
             f", from step {q.start_step}" if q.start_step else "")
    return out


def callback(installed: Installed, start_step: int):
    """A TrainerCallback switching fake quantization on at optimizer step ``start_step``."""
    from transformers import TrainerCallback

    class QatSwitch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            installed.enable(state.global_step >= start_step)

    return QatSwitch()


def record(q, installed: Installed) -> dict:
    """What the finetune marker keeps about QAT (the export must round on this grid)."""
    return {"weights": q.weights, "group_size": q.group_size, "symmetric": q.symmetric, "activations": q.activations,
            "start_step": q.start_step, "grid": q.grid,
            "export_scheme": "int4-rtn (symmetric)" if q.grid == "ort" else "int4-torchao",
            "fake_quantized_linears": len(installed.targets)}


def snap_to_grid(model, q) -> int:
    """Replace each target weight of a plain (merged) model by its fake-quantized value, in place: the weights the
    int4 export holds, as an fp32 model (a reference for parity). Returns how many weights were snapped."""
    import torch

    targets = _targets(model, q)
    fq = _weight_quantizer(q)
    with torch.no_grad():
        for _, mod, _, _ in targets:
            mod.weight.copy_(fq(mod.weight.float()))
    return len(targets)
