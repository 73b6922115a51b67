"""LoRA: low-rank adapters on the linear layers of an fp32 base (PEFT)."""

from __future__ import annotations

from edgeft.finetune.registry import METHODS, Method, task_of


def load_model(model_path, cfg, task: str = "causal-lm"):
    """Load the fp32 base with the head ``task`` needs (causal LM or sequence classification)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "seq-cls":
        return AutoModelForSequenceClassification.from_pretrained(str(model_path), torch_dtype=torch.float32,
                                                                  num_labels=getattr(cfg, "num_labels", None) or 2)
    return AutoModelForCausalLM.from_pretrained(str(model_path), torch_dtype=torch.float32)


def task_type(model) -> str:
    """PEFT's task type for ``model``."""
    return "SEQ_CLS" if task_of(model) == "seq-cls" else "CAUSAL_LM"


def peft_config(cfg, model=None):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules,
                      task_type=task_type(model) if model is not None else "CAUSAL_LM")


def prepare(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg, model))


METHODS.register("lora")(Method("lora", "LoRA adapters on an fp32 base (PEFT)", load_model, prepare,
                                produces="adapter", merge="merge"))
