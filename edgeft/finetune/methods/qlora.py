"""QLoRA: LoRA adapters on a 4-bit NF4 base loaded with bitsandbytes (CPU backend works, slowly)."""

from __future__ import annotations

from edgeft.finetune.methods.lora import prepare as lora_prepare
from edgeft.finetune.registry import METHODS, Method


def load_model(model_path, cfg, task: str = "causal-lm"):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    from edgeft.errors import UnsupportedError

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UnsupportedError("qlora needs bitsandbytes: pip install bitsandbytes (or use method: lora)") from e
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                             bnb_4bit_use_double_quant=True)
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    cls = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    model = cls.from_pretrained(str(model_path), quantization_config=bnb, torch_dtype=torch.float32,
                                device_map=device_map)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


METHODS.register("qlora")(Method("qlora", "LoRA adapters on a bitsandbytes NF4 base", load_model, lora_prepare,
                                 produces="adapter", merge="merge", quantized_base=True))
