"""Full fine-tuning: every weight of the fp32 base is trained; the result is a whole model."""

from __future__ import annotations

from edgeft.finetune.methods.lora import load_model
from edgeft.finetune.registry import METHODS, Method


def prepare(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHODS.register("full")(Method("full", "all weights trained (fp32); writes a whole model", load_model, prepare,
                                produces="model", merge="copy"))
