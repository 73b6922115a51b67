"""Training-speed pieces shared by the causal-LM objectives: padding-free batches, their safety check, step timing.

Throughput is counted one way everywhere (objectives and ``benchmarks/finetune_speed.py``): *real*
(non-pad) tokens trained divided by the wall time of the optimizer steps (forward, backward,
clipping, optimizer and scheduler), measured from ``on_step_begin`` to ``on_step_end``. Evaluation,
exact-match decoding, checkpoint saving and logging happen between steps and are reported apart.
"""

from __future__ import annotations

import contextlib
import time

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

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def check_packed_attention(model, sequences: list[list[int]], atol: float = 1e-3) -> float:
    """Run ``sequences`` packed into one row and one by one; raise if the logits differ (attention leaks).

    Returns the max |logit diff|. A leak (the attention implementation ignoring the packed-sequence
    mask) moves logits by O(1), far above float32 noise.
    """
    import torch

    seqs = [list(s) for s in sequences if len(s) > 0][:4]
    if len(seqs) < 2:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([sum(seqs, [])])
            pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
            packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
            diff, start = 0.0, 0
            for s in seqs:
                alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
                diff = max(diff, (packed[start:start + len(s)] - alone).abs().max().item())
                start += len(s)
    finally:
        if was_training:
            model.train()
    if not diff <= atol:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "?")
        raise UnsupportedError(
            f"padding-free batches leak attention across examples with attn_implementation={impl!r} "
            f"(max |logit diff| {diff:.3g} > {atol:g} between packed and separate examples); "
            "set finetune.padding_free: false")
    return diff


def real_tokens(dataset) -> int:
    """Non-pad tokens in a tokenized dataset (``input_ids`` are unpadded until collation)."""
    return sum(len(x) for x in dataset["input_ids"])


def step_timer():
    """A ``TrainerCallback`` summing the wall time of optimizer steps (see the module docstring)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds = 0.0
            self.steps = 0
            self._t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0
                self.steps += 1
                self._t0 = None

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
