"""LoRA: low-rank adapters on the linear layers of an fp32 base (PEFT)."""

from __future__ import annotations

from edgeft.finetune.registry import METHODS, Method


def load_model(model_path, cfg):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), torch_dtype=torch.float32)


def peft_config(cfg):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


METHODS.register("lora")(Method("lora", "LoRA adapters on an fp32 base (PEFT)", load_model, peft_config,
                                mergeable=True, quantized_base=False))
