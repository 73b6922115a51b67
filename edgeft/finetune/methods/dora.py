"""DoRA: weight-decomposed LoRA (PEFT ``use_dora=True``): a LoRA update of the direction plus a trained
per-output magnitude vector. Same settings as LoRA (``finetune.lora``); merges like LoRA."""

from __future__ import annotations

from edgeft.finetune.methods.lora import load_model, peft_config
from edgeft.finetune.registry import METHODS, Method


def prepare(model, cfg):
    from peft import get_peft_model

    pc = peft_config(cfg, model)
    pc.use_dora = True
    return get_peft_model(model, pc)


METHODS.register("dora")(Method("dora", "DoRA: LoRA with a learned magnitude per output (PEFT)", load_model, prepare,
                                produces="adapter", merge="merge"))
