"""QLoRA: LoRA adapters on a bitsandbytes-quantized base: 4-bit NF4 (double-quantized, the QLoRA paper)
or 8-bit LLM.int8 (``finetune.qlora.bits: 8``). The bitsandbytes CPU backend runs both, slowly.
Merging reloads the base un-quantized in fp32 (never merges into quantized weights)."""

from __future__ import annotations

from edgeft.finetune.methods.lora import prepare as lora_prepare
from edgeft.finetune.registry import METHODS, Method


def quantization_config(bits: int):
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                              bnb_4bit_use_double_quant=True)


def load_model(model_path, cfg, task: str = "causal-lm"):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from edgeft.errors import UnsupportedError

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UnsupportedError("qlora needs bitsandbytes: pip install bitsandbytes (or use method: lora)") from e
    bits = getattr(getattr(cfg, "qlora", None), "bits", 4)
    # On CPU no device_map: with one, weights the checkpoint lacks (a new classifier head) stay on the
    # meta device and dispatching the model fails ("Cannot copy out of meta tensor", MiniLM seq-cls).
    device_map = {"": 0} if torch.cuda.is_available() else None
    kw = {}
    if task == "seq-cls":
        cls = AutoModelForSequenceClassification
        kw["num_labels"] = getattr(cfg, "num_labels", None) or 2
    else:
        cls = AutoModelForCausalLM
    model = cls.from_pretrained(str(model_path), quantization_config=quantization_config(bits),
                                torch_dtype=torch.float32, device_map=device_map, **kw)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


# Padded batches: on SmolLM2-135M the NF4 base's logits for the same tokens move by up to 0.23 with
# the row count alone (bitsandbytes' CPU kernel; same row count, other filler tokens: identical) and
# by 0.33 between a packed row and separate rows, so the padding-free leak check (fp32-tight) cannot
# tell its rounding from a leak.
METHODS.register("qlora")(Method("qlora", "LoRA adapters on a bitsandbytes NF4 (or int8) base", load_model,
                                 lora_prepare, produces="adapter", merge="merge", quantized_base=True,
                                 padding_free=False))
