"""Training-speed pieces shared by the causal-LM objectives: padding-free batches, their safety check, step timing.

Throughput is counted one way everywhere (objectives and ``benchmarks/finetune_speed.py``): *real*
(non-pad) tokens trained divided by the wall time of the optimizer steps (forward, backward,
clipping, optimizer and scheduler), measured from ``on_step_begin`` to ``on_step_end``. Evaluation,
exact-match decoding, checkpoint saving and logging happen between steps and are reported apart.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from edgeft.errors import UnsupportedError


def padding_free_collator(tokenizer):
    """TRL's collator in padding-free mode: a batch's examples concatenated into one row, no pad tokens.

    Each example restarts ``position_ids`` at 0 and no ``attention_mask`` is passed; transformers
    (>= 4.54, torch >= 2.6) then builds a block-diagonal causal mask from the position ids for the
    sdpa and eager attention, so examples do not attend to each other (checked by
    :func:`check_packed_attention`). The label of each example's first token is set to -100, so the
    loss is the same token mean as the padded batch's.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = getattr(tokenizer, "pad_token_id", None)
    return DataCollatorForLanguageModeling(pad_token_id=0 if pad is None else pad, padding_free=True)


def shared_prefix_collator(tokenizer):
    """Padding-free rows in which the prompt prefix all of a batch's examples share is computed once.

    With a fixed system prompt every example of a batch starts with the same tokens (16 of the
    quickstart's 46). The row holds the first example whole, then only the rest of each other
    example, whose ``position_ids`` continue from the prefix length ``p`` instead of restarting at
    0: :func:`packed_attention` reads such a segment as "continues the row's first ``p`` tokens".
    Every example then sees exactly the keys and values it would see alone, and the prefix's
    gradient is the sum of what each example sends it, so the loss and gradients are those of the
    padded batch (checked by :func:`check_packed_attention` before training). The prefix stops
    before the position that predicts an example's first loss token, so every loss term keeps its
    own position. Needs :data:`PACKED_ATTENTION`: other attentions read the layout as separate
    examples.
    """
    import torch

    base = padding_free_collator(tokenizer)

    def collate(examples: list[dict]) -> dict:
        p = shared_prefix_length(examples)
        if p == 0:
            return base(examples)
        ids, labels, pos = [], [], []
        for i, ex in enumerate(examples):
            start = 0 if i == 0 else p
            lab = list(ex.get("labels", ex["input_ids"]))
            ids += ex["input_ids"][start:]
            labels += [-100] + lab[start + 1:]  # a segment's first token is never predicted inside it
            pos += range(start, len(ex["input_ids"]))
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([pos])}

    return collate


def shared_prefix_length(examples: list[dict]) -> int:
    """Tokens at the start of every example that can be computed once (0 for fewer than two examples).

    The longest common prefix of the ``input_ids``, cut to leave each example's last prompt token
    (the position whose logits score its first loss token) and at least one token of its own.
    """
    if len(examples) < 2:
        return 0
    seqs = [ex["input_ids"] for ex in examples]
    limit = min(len(s) for s in seqs) - 1
    for ex in examples:
        lab = ex.get("labels")
        if lab is not None:
            first = next((j for j, t in enumerate(lab) if t != -100), len(lab))
            limit = min(limit, first - 1)
    p = 0
    first_seq = seqs[0]
    while p < limit and all(s[p] == first_seq[p] for s in seqs[1:]):
        p += 1
    return p


PACKED_ATTENTION = "edgeft_packed"


def packed_segments(position_ids) -> list[tuple[int, int, int]]:
    """``(start, end, prefix)`` for each example of one packed row, read from its ``position_ids``.

    A new example starts wherever the positions do not continue by +1. An example whose positions
    start at ``prefix > 0`` continues the row's first ``prefix`` tokens (a shared prompt prefix, see
    :func:`shared_prefix_collator`); the row's first example must start at 0 and hold them.
    """
    pos = position_ids.tolist()
    starts = [0] + [j for j in range(1, len(pos)) if pos[j] != pos[j - 1] + 1]
    ends = starts[1:] + [len(pos)]
    first_len = ends[0] - starts[0] if pos and pos[0] == 0 else 0
    segs = []
    for s, e in zip(starts, ends):
        p = pos[s]
        if p > first_len:
            raise ValueError(f"packed row: an example starts at position {p} but the row's first example holds "
                             f"only {first_len} prefix tokens (position_ids must restart at 0 or continue a prefix)")
        segs.append((s, e, p))
    return segs


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     **kwargs):
    """Attention that runs each example of a padding-free row on its own (registered as :data:`PACKED_ATTENTION`).

    transformers' sdpa attends over the whole packed row under a block-diagonal mask: O(L²) for a
    row of L tokens and a materialized mask, with no fused kernel (19% of a LoRA step on the
    quickstart, docs/benchmarks.md). Here each example is one causal SDPA call over its own tokens
    (plus a shared prefix's keys, see :func:`packed_segments`): the same values with O(Σ lᵢ²) work.
    Anything that is not one packed row without a cache (padded batches, generation) is plain sdpa.
    transformers has no varlen attention for CPU (its varlen path is flash-attn, CUDA only), hence
    this function.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    segs = None
    if position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1:
        segs = packed_segments(position_ids[0])
    if not segs or (len(segs) == 1 and segs[0][2] == 0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    cpu = query.device.type == "cpu"
    if cpu:  # CPU SDPA runs these short segments 2.6x faster in fp32 than in bf16 (docs/benchmarks.md)
        query, key, value = query.float(), key.float(), value.float()
    outs = []
    with torch.autocast(query.device.type, enabled=False) if cpu else contextlib.nullcontext():
        for s, e, p in segs:
            q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
            mask = None
            if p:  # keys: the shared prefix, then the example's own tokens; causal aligned to the end
                k = torch.cat([key[:, :, :p], k], dim=2)
                v = torch.cat([value[:, :, :p], v], dim=2)
                n = e - s
                mask = torch.ones(n, p + n, dtype=torch.bool, device=query.device).tril(diagonal=p)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                       is_causal=mask is None, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    """Register :func:`packed_attention` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    # padded batches and generation still get sdpa's mask; a packed row's mask goes unused
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION


@contextlib.contextmanager
def use_packed_attention(model, enabled: bool = True):
    """Inside the block, ``model`` attends with :func:`packed_attention` if it was on sdpa or eager.

    Other attentions (flash-attention on CUDA reads the collator's ``cu_seq_lens``) are left as
    they are. Restored on exit, so nothing saved names the function. Yields whether it is in use.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if not enabled or previous not in ("sdpa", "eager"):
        yield False
        return
    config._attn_implementation = register_packed_attention()
    try:
        yield True
    finally:
        config._attn_implementation = previous


def check_packed_attention(model, examples: list[dict], collator=None, atol: float = 1e-3) -> float:
    """Run ``examples`` collated into one padding-free row and one by one; raise if the logits differ.

    ``examples`` are token-id lists or dicts with ``input_ids`` (and ``labels``, which bound a shared
    prefix); ``collator`` is the padding-free collator training uses (default: plain packing).
    Returns the max |logit diff|. A leak (an attention ignoring the examples' boundaries, or a shared
    prefix read wrongly) moves logits by O(1), far above float32 noise.
    """
    import torch

    examples = [e if isinstance(e, dict) else {"input_ids": list(e)} for e in examples]
    examples = [e for e in examples if len(e["input_ids"]) > 0][:4]
    if len(examples) < 2:
        return 0.0
    batch = (collator or padding_free_collator(None))(examples)
    segs = packed_segments(batch["position_ids"][0])
    spans = [e - s for s, e, _ in segs]
    wanted = [len(ex["input_ids"]) - p for ex, (_, _, p) in zip(examples, segs)]
    if len(segs) != len(examples) or spans != wanted:
        raise UnsupportedError(
            f"padding-free collator: its row holds segments of {spans} tokens for {len(examples)} examples "
            f"of {[len(ex['input_ids']) for ex in examples]} tokens; set finetune.padding_free: false")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
            diff = 0.0
            for ex, (s, e, p) in zip(examples, segs):
                alone = model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits[0]
                diff = max(diff, (packed[s:e] - alone[p:]).abs().max().item())
    finally:
        if was_training:
            model.train()
    if not diff <= atol:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "?")
        raise UnsupportedError(
            f"padding-free batches leak attention across examples with attn_implementation={impl!r} "
            f"(max |logit diff| {diff:.3g} > {atol:g} between packed and separate examples); "
            + ("set finetune.packed_attention: false (or finetune.padding_free: false)" if impl == PACKED_ATTENTION
               else "set finetune.padding_free: false"))
    return diff


def _frozen_lora_bases(model) -> dict:
    """``{name: nn.Linear}`` of the fp32 frozen base layers under LoRA (not DoRA), tied weights excepted."""
    import torch
    from peft.tuners.lora import LoraLayer

    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or any(getattr(module, "use_dora", {}).values()):
            continue
        base = module.get_base_layer()
        if isinstance(base, torch.nn.Linear) and not base.weight.requires_grad \
                and base.weight.dtype == torch.float32 and seen.get(id(base.weight)) == 1:
            out[name] = base
    return out


@contextlib.contextmanager
def bf16_lora_base(model, spill_dir, enabled: bool = True):
    """Inside the block, the frozen base weights under LoRA layers are stored in bf16; yields how many.

    Under bf16 autocast every ``linear`` casts its fp32 weight to bf16 on every forward (autocast
    caches casts only for weights that train) and keeps that copy for backward: memory traffic and
    RAM for no effect, as the matmul sees the same rounded values when the weight is stored rounded
    (the tests check the loss and gradients are bit-identical). LoRA's own weights, embeddings,
    norms, the LM head and tied weights stay fp32, so the residual stream and the optimizer are
    unchanged. The model needs autocast to run inside the block. DoRA layers are skipped (they read
    the base weight's norm in its own dtype).

    The exact fp32 weights go to ``spill_dir`` (a safetensors file, not RAM) and are put back on
    exit, so the model leaves the block as it came in.
    """
    import torch

    bases = _frozen_lora_bases(model) if enabled else {}
    if not bases:
        yield 0
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    spill_dir = Path(spill_dir)
    spill_dir.mkdir(parents=True, exist_ok=True)
    spill = spill_dir / "fp32-lora-base.safetensors"
    tensors = {f"{name}.{kind}": t.data for name, base in bases.items()
               for kind, t in (("weight", base.weight), ("bias", base.bias)) if t is not None}
    save_file(tensors, str(spill.with_suffix(".tmp")))
    spill.with_suffix(".tmp").replace(spill)
    del tensors
    for base in bases.values():
        for t in (base.weight, base.bias):
            if t is not None:
                t.data = t.data.to(torch.bfloat16)
    try:
        yield len(bases)
    finally:
        with safe_open(str(spill), "pt") as f:
            for name, base in bases.items():
                base.weight.data = f.get_tensor(f"{name}.weight")
                if base.bias is not None:
                    base.bias.data = f.get_tensor(f"{name}.bias")
        spill.unlink()


def real_tokens(dataset) -> int:
    """Non-pad tokens in a tokenized dataset (``input_ids`` are unpadded until collation)."""
    return sum(len(x) for x in dataset["input_ids"])


def step_timer():
    """A ``TrainerCallback`` summing the wall time of optimizer steps (see the module docstring).

    It also keeps ``peak_rss_mb``, the process's peak memory at the end of the last optimizer step:
    model loading and the steps, not the evaluation that follows them.
    """
    from transformers import TrainerCallback

    from edgeft.runtime.bench import peak_rss_mb

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds = 0.0
            self.steps = 0
            self.peak_rss_mb = None
            self._t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0
                self.steps += 1
                self._t0 = None
                self.peak_rss_mb = peak_rss_mb()

    return StepTimer()


def bf16_native() -> bool:
    """Whether this machine runs bf16 matmuls natively (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(precision: str) -> bool:
    """Resolve ``FinetuneConfig.precision``: "bf16" / "fp32", or "auto" = bf16 autocast where it is native."""
    if precision == "auto":
        return bf16_native()
    return precision == "bf16"


# Above this many logits (answer positions x vocab) the loss goes back to TRL's chunked LM head, whose memory
# does not grow with the answer length: 2**26 fp32 logits are 256 MB.
MAX_ANSWER_LOGITS = 2 ** 26


def answer_only_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss with the LM head run only at the positions that predict a label; ``None`` past the size cap.

    The positions go to the model as transformers' ``logits_to_keep`` (a 1-D index tensor), so the
    head is one matmul over the answer positions (bf16 under autocast) followed by an fp32
    cross-entropy. TRL's fused head computes the same per-token log-probabilities in vocabulary
    tiles with extra entropy statistics and recomputes the tiles in backward with fp32 GEMMs; on
    CPU, for the quickstart's 148 answer tokens of a batch and a 49k vocabulary, that is 393 ms per
    step against 85 ms here (docs/benchmarks.md). Its bounded memory matters for long answers,
    hence :data:`MAX_ANSWER_LOGITS`.

    Returns ``(loss, stats)``: the loss is the sum over answer tokens divided by
    ``num_items_in_batch`` (gradient accumulation) or by their count; ``stats`` holds the correct
    top-1 count and the token count for the trainer's token accuracy. The per-token entropy TRL
    also logs is left out: a further pass over the vocabulary's probabilities cost as much as the
    loss itself (~90 ms a step on the quickstart).
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    target = labels[:, 1:]
    valid = target != -100
    cols = valid.any(dim=0).nonzero().flatten()
    vocab = getattr(model, "module", model).get_output_embeddings().weight.shape[0]  # DDP wraps the model
    if labels.shape[0] * cols.numel() * vocab > MAX_ANSWER_LOGITS:
        return None, None
    fwd = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**fwd, use_cache=False, logits_to_keep=cols).logits.float()  # [B, n, V]
    picked = target[:, cols]
    total = F.cross_entropy(logits.reshape(-1, vocab), picked.reshape(-1), ignore_index=-100, reduction="sum")
    count = valid.sum()
    denom = count if num_items_in_batch is None else num_items_in_batch
    loss = total / torch.as_tensor(denom, device=total.device).clamp(min=1)
    with torch.no_grad():
        mask = picked != -100
        stats = {"correct": ((logits.argmax(-1) == picked) & mask).sum(), "count": count}  # no [n, V] copy
    return loss, stats


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under ``model`` (PEFT-wrapped or not) takes transformers' ``logits_to_keep``."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:  # the class's forward: TRL patches the instance's with its fused head
        params = inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params and hasattr(inner, "get_output_embeddings")


@contextlib.contextmanager
def answer_only_lm_head(enabled: bool = True):
    """Inside the block, TRL's fused LM head projects only the positions that carry a loss on CPU too.

    TRL (1.16) scores every position through the LM head (49k-vocab matmul, recomputed in backward,
    plus entropy) unless its Triton kernels run, and drops the non-loss positions afterwards; it
    avoids compacting elsewhere only because Neuron recompiles on every new shape. With the loss on
    answers only, most positions are prompt tokens, so on CPU we take TRL's own compact path (the
    per-token values are the same; only the wasted rows go). TRL exposes no switch for it, hence the
    scoped patch of the one function that decides, restored on exit.
    """
    if not enabled:
        yield
        return
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # a TRL without the fused head: nothing to do
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original
