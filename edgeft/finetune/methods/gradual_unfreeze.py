"""Gradual unfreezing (ULMFiT-style): start with the top ``unfreeze.start`` block(s) and the head,
then unfreeze one more block below every epoch (or every ``unfreeze.every_steps`` optimizer steps),
never below block ``unfreeze.floor``.

The schedule is a ``TrainerCallback`` (:class:`UnfreezeCallback`). The Trainer builds its optimizer
from the parameters that require grad when training starts, so :func:`prepare` marks every block
the schedule will ever reach as trainable, and the callback narrows that to the current schedule at
``on_train_begin`` (after the optimizer exists) and widens it at each step. Frozen parameters get no
gradient, and AdamW leaves a parameter without a gradient untouched (no update, no weight decay).
The schedule depends only on the global step, so a resumed run picks up where it stopped.
One process only: DDP cannot follow a changing set of trainable parameters. The head is as in
``freeze`` (a tied LM head is the embedding matrix). The result is a whole model.
"""

from __future__ import annotations

import logging

from edgeft.errors import ConfigError, UnsupportedError
from edgeft.finetune.methods._parts import parts, train_only
from edgeft.finetune.methods.lora import load_model
from edgeft.finetune.registry import METHODS, Method, task_of

log = logging.getLogger(__name__)


def unfrozen_blocks(n_blocks: int, ucfg, step: int, steps_per_epoch: int) -> list[int]:
    """Indices of the blocks trainable at optimizer step ``step`` (0-based: steps already done)."""
    every = ucfg.every_steps or max(1, steps_per_epoch)
    k = min(ucfg.start + step // every, n_blocks - ucfg.floor)
    return list(range(n_blocks - k, n_blocks))


def _check(model, ucfg):
    p = parts(model, "finetune.unfreeze")
    n = len(p.blocks)
    if ucfg.floor >= n:
        raise ConfigError(f"finetune.unfreeze.floor: {ucfg.floor} must be below the model's {n} blocks")
    if ucfg.start > n - ucfg.floor:
        raise ConfigError(f"finetune.unfreeze.start: {ucfg.start} blocks do not fit above floor {ucfg.floor} "
                          f"({n} blocks); lower start or floor")
    if task_of(model) == "seq-cls" and not ucfg.train_head:
        raise ConfigError("finetune.unfreeze.train_head: false would leave the new classification head random")
    return p


def prepare(model, cfg):
    if cfg.processes > 1:
        raise UnsupportedError("gradual-unfreeze changes the trainable set during training, which DDP cannot "
                               "follow; set finetune.processes: 1 (or use method freeze)")
    p = _check(model, cfg.unfreeze)
    reach = [x for b in p.blocks[cfg.unfreeze.floor:] for x in b] + (p.head if cfg.unfreeze.train_head else [])
    return train_only(model, reach, "finetune.unfreeze")


def callbacks(model, cfg) -> list:
    return [unfreeze_callback(model, cfg.unfreeze)]


def unfreeze_callback(model, ucfg):
    """A ``TrainerCallback`` applying :func:`unfrozen_blocks` before every optimizer step."""
    from transformers import TrainerCallback  # here, so importing the registry stays light

    class UnfreezeCallback(TrainerCallback):
        def __init__(self):
            self.parts = _check(model, ucfg)
            self.steps_per_epoch = 1
            self.current: list[int] | None = None

        def apply(self, step: int) -> list[int]:
            idx = unfrozen_blocks(len(self.parts.blocks), ucfg, step, self.steps_per_epoch)
            if idx != self.current:
                names = {x for i in idx for x in self.parts.blocks[i]}
                if ucfg.train_head:
                    names |= set(self.parts.head)
                for n, p in model.named_parameters():
                    p.requires_grad_(n in names)
                log.info("gradual-unfreeze: step %d: training blocks %s%s", step, idx,
                         " + head" if ucfg.train_head else "")
                self.current = idx
            return idx

        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            if train_dataloader is not None:
                try:
                    self.steps_per_epoch = max(1, len(train_dataloader) // max(1, args.gradient_accumulation_steps))
                except TypeError:  # an iterable dataset has no length: fall back to max_steps / epochs
                    self.steps_per_epoch = max(1, int(state.max_steps / max(args.num_train_epochs, 1)))
            self.apply(state.global_step)

        def on_step_begin(self, args, state, control, **kw):
            self.apply(state.global_step)

    return UnfreezeCallback()


METHODS.register("gradual-unfreeze")(Method(
    "gradual-unfreeze", "top block(s) first, one more block per epoch (or every K steps); writes a whole model",
    load_model, prepare, produces="model", merge="copy", callbacks=callbacks))
