"""Freeze: train only the top ``freeze.top_blocks`` transformer blocks and (``freeze.train_head``) the head.

The head is everything after the last block: the final norm and the LM head (causal LM), or the
pooler and classifier (BERT sequence classifier). When the LM head is tied to the input
embeddings (SmolLM2, the tiny test LLaMA) it *is* the embedding matrix, so training the head
trains the embeddings too; set ``train_head: false`` to keep them. A sequence classifier's head is
new and random, so it must train. The result is a whole model (``merge`` copies it).
"""

from __future__ import annotations

import logging

from edgeft.errors import ConfigError
from edgeft.finetune.methods._parts import parts, train_only
from edgeft.finetune.methods.lora import load_model
from edgeft.finetune.registry import METHODS, Method, task_of

log = logging.getLogger(__name__)


def trainable_names(model, top_blocks: int, train_head: bool, where: str = "finetune.freeze") -> list[str]:
    p = parts(model, where)
    n = len(p.blocks)
    if top_blocks > n:
        raise ConfigError(f"{where}.top_blocks: {top_blocks} > the model's {n} blocks; use at most {n} (or method full)")
    if task_of(model) == "seq-cls" and not train_head:
        raise ConfigError(f"{where}.train_head: false would leave the new classification head random; set it true")
    names = [x for b in p.blocks[n - top_blocks:] for x in b] if top_blocks else []
    if train_head:
        names += p.head
    if not names:
        raise ConfigError(f"{where}: top_blocks 0 and train_head false train nothing; raise top_blocks")
    return names


def prepare(model, cfg):
    f = cfg.freeze
    names = trainable_names(model, f.top_blocks, f.train_head)
    log.info("freeze: training the top %d block(s)%s", f.top_blocks, " and the head" if f.train_head else "")
    return train_only(model, names, "finetune.freeze")


METHODS.register("freeze")(Method("freeze", "only the top N blocks (+ head) trained; writes a whole model",
                                  load_model, prepare, produces="model", merge="copy"))
