"""P-tuning (Liu et al.): virtual tokens produced by a small prompt encoder (MLP, hidden size
``prompt.encoder_hidden_size``) and prepended to the input embeddings (PEFT ``PromptEncoderConfig``).
Not mergeable."""

from __future__ import annotations

from edgeft.finetune.methods._prompt import note
from edgeft.finetune.methods.lora import load_model, task_type
from edgeft.finetune.registry import METHODS, Method


def prepare(model, cfg):
    from peft import PromptEncoderConfig, get_peft_model

    p = cfg.prompt
    return get_peft_model(model, PromptEncoderConfig(task_type=task_type(model), num_virtual_tokens=p.num_virtual_tokens,
                                                     encoder_hidden_size=p.encoder_hidden_size,
                                                     encoder_reparameterization_type="MLP"))


METHODS.register("p-tuning")(Method(
    "p-tuning", "virtual tokens from a trained prompt encoder (PEFT); not mergeable", load_model, prepare,
    produces="adapter", merge="refuse", merge_note=note("p-tuning"), padding_free=False))
