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
-8, nothing clipped; torchao's grid puts it at 7.5 steps and clips the positive side), rounded as ORT
rounds (exact halves up); ``int4-rtn`` (symmetric) then exports it bit for bit.

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
    if cfg.qat.preserve is not None and cfg.objective != "sft":
        raise ConfigError(f"finetune.qat.preserve with objective {cfg.objective}: the general-text distillation is "
                          "added to the sft loss only; use objective sft or set finetune.qat.preserve: null")
    if cfg.qat.preserve is not None and cfg.processes > 1:
        raise UnsupportedError(f"finetune.qat.preserve with finetune.processes={cfg.processes}: the distillation's "
                               "second forward per step is not synchronized across processes; set processes: 1 or "
                               "preserve: null")
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


def record(q, installed: Installed, preserve: "Preserve | None" = None) -> dict:
    """What the finetune marker keeps about QAT (the export must round on this grid)."""
    out = {"weights": q.weights, "group_size": q.group_size, "symmetric": q.symmetric, "activations": q.activations,
           "start_step": q.start_step, "grid": q.grid,
           "export_scheme": "int4-rtn (symmetric)" if q.grid == "ort" else "int4-torchao",
           "fake_quantized_linears": len(installed.targets)}
    if preserve is not None:
        out["preserve"] = preserve.summary()
    return out


@dataclass
class Preserve:
    """General-text distillation targets for ``finetune.qat.preserve``: token windows and, for each next-token
    position, the base model's top-k log-probabilities, computed once before training with the adapter off and
    fake quantization off. :meth:`loss` is the KL divergence from the base of the training model's next-token
    distribution, over those k tokens and one bucket for the rest of the vocabulary (exact for that coarsening:
    0 for the base itself, and mass moved off the base's top-k counts), on the next ``batch_size`` windows
    (cycled through).

    Without it QAT learns the task under rounding and nothing else: the rounded model keeps the task but loses
    general text as much as, or more than, post-training rounding of the same plan (docs/methods.md). The
    targets are sampled from the base model itself (LLM-QAT's data-free distillation) unless a text file is
    given, so no held-out corpus is trained on.
    """

    ids: object  # [N, L] token ids
    top_idx: object  # [N, L-1, k] the base model's top-k next tokens
    top_logp: object  # [N, L-1, k] their log-probabilities
    weight: float
    batch_size: int
    source: str
    seconds: float = 0.0
    kl: list = field(default_factory=list)  # per training step
    _next: int = 0

    def loss(self, model):
        """(weight * KL, KL detached) on the next batch of windows."""
        import torch
        import torch.nn.functional as F

        n = self.ids.size(0)
        rows = torch.tensor([(self._next + i) % n for i in range(min(self.batch_size, n))])
        self._next = (self._next + len(rows)) % n
        logits = _next_token_logits(model, self.ids[rows])
        logq = F.log_softmax(logits, -1).gather(-1, self.top_idx[rows].to(logits.device))
        logp = self.top_logp[rows].to(logits.device)
        rest_p = _log_rest(logp)
        kl = ((logp.exp() * (logp - logq)).sum(-1) + rest_p.exp() * (rest_p - _log_rest(logq))).mean()
        self.kl.append(float(kl.detach()))
        return self.weight * kl, kl.detach()

    def summary(self) -> dict:
        first, last = self.kl[:5], self.kl[-5:]
        return {"text": self.source, "sequences": int(self.ids.size(0)), "seq_len": int(self.ids.size(1)),
                "top_k": int(self.top_idx.size(-1)), "weight": self.weight, "build_seconds": round(self.seconds, 1),
                "kl_first_steps": sum(first) / len(first) if first else None,
                "kl_last_steps": sum(last) / len(last) if last else None}


def build_preserve(model, tokenizer, pc, installed: Installed, seed: int = 0) -> Preserve:
    """The :class:`Preserve` targets of ``pc`` (a QatPreserveConfig) from ``model`` as the base: PEFT adapters
    disabled and fake quantization off while sampling and scoring (called before the first training step)."""
    import contextlib
    import time

    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    was_training, states = model.training, [fq.enabled for fq in installed.quantizers]
    installed.enable(False)
    model.eval()
    try:
        base_only = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), base_only:
            if pc.text == "self":
                ids = _sampled(model, tokenizer, pc, seed, device)
            else:
                ids = _windows(tokenizer, pc)
            idx, logp = [], []
            for chunk in ids.split(8):
                logits = _next_token_logits(model, chunk)
                top = logits.topk(pc.top_k, dim=-1)
                idx.append(top.indices.cpu())
                logp.append(F.log_softmax(logits, -1).gather(-1, top.indices).cpu())
    finally:
        for fq, on in zip(installed.quantizers, states):
            fq.enabled = on
        model.train(was_training)
    out = Preserve(ids.cpu(), torch.cat(idx), torch.cat(logp), pc.weight, pc.batch_size,
                   "sampled from the base model" if pc.text == "self" else pc.text)
    out.seconds = time.perf_counter() - t0
    log.info("finetune.qat.preserve: %d general-text sequences of %d tokens (%s), base model's top-%d targets, "
             "%.0f s", out.ids.size(0), out.ids.size(1), out.source, pc.top_k, out.seconds)
    return out


def _next_token_logits(model, ids):
    """fp32 logits [B, L-1, V] of ``model`` predicting each next token of the rows ``ids`` [B, L]; positions are
    given, so a padding-free attention (speed.use_packed_attention) reads each row as one sequence."""
    import torch

    device = next(model.parameters()).device
    ids = ids.to(device)
    pos = torch.arange(ids.size(1), device=device).expand_as(ids)
    return model(input_ids=ids, position_ids=pos).logits[:, :-1].float()


def _log_rest(logp):
    """log of the probability outside the k tokens whose log-probabilities are ``logp`` (last axis)."""
    import torch

    return torch.log1p(-torch.logsumexp(logp, -1).exp().clamp(max=1 - 1e-6))


def _sampled(model, tokenizer, pc, seed: int, device):
    """``pc.sequences`` sequences of ``pc.seq_len`` tokens sampled from ``model`` from its BOS token."""
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UnsupportedError("finetune.qat.preserve.text self: the tokenizer has neither a BOS nor an EOS token to "
                               "start sampling from; give a text file instead")
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for b in range(0, pc.sequences, 16):
            m = min(16, pc.sequences - b)
            prompt = torch.full((m, 1), start, dtype=torch.long, device=device)
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                 temperature=pc.temperature, top_k=0, top_p=1.0, max_new_tokens=pc.seq_len - 1,
                                 min_new_tokens=pc.seq_len - 1, pad_token_id=start)
            rows.append(out[:, : pc.seq_len].cpu())
    return torch.cat(rows)


def _windows(tokenizer, pc):
    """Up to ``pc.sequences`` windows of ``pc.seq_len`` tokens of the text file ``pc.text``, evenly spaced."""
    from pathlib import Path

    import torch

    from edgeft.data.readers import read_text
    from edgeft.errors import DataError

    if not Path(pc.text).is_file():
        raise DataError(f"{pc.text}: file not found (finetune.qat.preserve.text: relative paths are read from the "
                        "working directory); give an existing text file or text: self")
    ids = tokenizer(read_text(Path(pc.text)), add_special_tokens=False)["input_ids"]
    n = len(ids) // pc.seq_len
    if n < 1:
        raise DataError(f"{pc.text}: {len(ids)} tokens, fewer than one window of finetune.qat.preserve.seq_len "
                        f"{pc.seq_len}; give a longer text or a smaller seq_len")
    picks = sorted({int(i * n / min(n, pc.sequences)) for i in range(min(n, pc.sequences))})
    return torch.tensor([ids[i * pc.seq_len:(i + 1) * pc.seq_len] for i in picks], dtype=torch.long)


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
