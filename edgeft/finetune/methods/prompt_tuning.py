"""Prompt tuning (Lester et al.): ``prompt.num_virtual_tokens`` trained input embeddings prepended to every
input (PEFT). ``prompt.init_text`` initialises them from a text's token embeddings. Not mergeable."""

from __future__ import annotations

from edgeft.finetune.methods._prompt import note
from edgeft.finetune.methods.lora import load_model, task_type
from edgeft.finetune.registry import METHODS, Method


def prepare(model, cfg):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    p = cfg.prompt
    kw = {}
    if p.init_text:
        kw = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=p.init_text,
                  tokenizer_name_or_path=model.config._name_or_path)
    return get_peft_model(model, PromptTuningConfig(task_type=task_type(model), num_virtual_tokens=p.num_virtual_tokens,
                                                    **kw))


METHODS.register("prompt-tuning")(Method(
    "prompt-tuning", "trained virtual input tokens (PEFT); not mergeable", load_model, prepare,
    produces="adapter", merge="refuse", merge_note=note("prompt-tuning"), padding_free=False))
