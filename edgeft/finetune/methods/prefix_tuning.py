"""Prefix tuning (Li & Liang): trained key/value prefixes for every attention layer (PEFT); with
``prompt.prefix_projection`` they are produced by an MLP during training. Not mergeable."""

from __future__ import annotations

from edgeft.finetune.methods._prompt import note
from edgeft.finetune.methods.lora import load_model, task_type
from edgeft.finetune.registry import METHODS, Method


def prepare(model, cfg):
    from peft import PrefixTuningConfig, get_peft_model

    p = cfg.prompt
    return get_peft_model(model, PrefixTuningConfig(task_type=task_type(model), num_virtual_tokens=p.num_virtual_tokens,
                                                    prefix_projection=p.prefix_projection))


METHODS.register("prefix-tuning")(Method(
    "prefix-tuning", "trained attention key/value prefixes (PEFT); not mergeable", load_model, prepare,
    produces="adapter", merge="refuse", merge_note=note("prefix-tuning", " (a key/value prefix per layer)"),
    padding_free=False))
