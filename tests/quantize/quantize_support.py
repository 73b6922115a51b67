"""Fixtures and helpers of the schemes that work on the base model's own 4-bit grid (int4-lora, int4-basegrid).

The tiny LLaMA's Linear weights are first snapped onto an asymmetric 4-bit grid (blocks of 32 along
the input, float step and offset: GGUF Q4_1's form, as the embedded SmolLM2 ships), then a LoRA
adapter with random A and B is merged into it (``adapted``). Test modules import the fixtures by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SYSTEM = "Parse the request into JSON."  # the intent task's system prompt


def _snap_q4_1(w, block: int = 32):
    """``w`` [out, in] on GGUF Q4_1's grid: per block of ``block`` inputs, min + step * code, 16 levels."""
    import torch

    b = w.reshape(w.shape[0], -1, block)
    mn = b.amin(-1, keepdim=True)
    d = (b.amax(-1, keepdim=True) - mn) / 15
    return (mn + d * torch.round((b - mn) / d)).reshape(w.shape)


@pytest.fixture(scope="module")
def adapted(tiny_lm_dir, tmp_path_factory):
    """(base-on-grid folder, adapter folder, merged folder, merged ONNX folder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("lora-int4")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                mod.weight.copy_(_snap_q4_1(mod.weight))
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # a delta about a tenth of a 4-bit step, like a short fine-tune's
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    merged = peft_model.merge_and_unload()
    merged_dir = root / "merged"
    merged.save_pretrained(merged_dir)
    tok.save_pretrained(merged_dir)
    onnx_dir = root / "onnx"
    export_onnx(merged_dir, onnx_dir, opset=18)
    return base, adapter, merged_dir, onnx_dir


@pytest.fixture(scope="module")
def heldout(tiny_lm_dir):
    from transformers import AutoTokenizer

    from edgeft.data.intents import generate
    from edgeft.data.templates import conversation_text

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    text = "".join(conversation_text(tok, SYSTEM, r["prompt"], r["response"]) for r in generate(8, 8, seed=3)[1])
    return [np.asarray(tok(text, add_special_tokens=False).input_ids[:128], np.int64)]


def logits_of(onnx_dir: Path, ids):
    from edgeft.runtime.lm import load_lm

    return load_lm(onnx_dir, "onnx", 2).logits(ids[0])


def kl(ref, cand) -> float:
    def logsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = logsm(ref), logsm(cand)
    return float((np.exp(p) * (p - q)).sum(-1).mean())
