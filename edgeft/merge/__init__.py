"""Merge stage: fold adapters into the base weights and prove the merged model computes the same logits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from edgeft.errors import ParityError, StageError

log = logging.getLogger(__name__)

__all__ = ["merge"]


def merge(adapter_dir: Path, out_dir: Path, base_model: Path | None = None, tolerance: float = 2e-3,
          sample_texts: Sequence[str] = ("Hello, how are you?",)) -> dict:
    """Merge a PEFT adapter into an un-quantized fp32 reload of its base; write safetensors + tokenizer.

    The parity report compares logits of the adapter model (base + adapter, un-merged) with the
    merged model on ``sample_texts``; a max |diff| above ``tolerance`` raises :class:`ParityError`.
    QLoRA adapters are merged the same way: the base is reloaded in fp32, never merged into nf4.
    """
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise StageError(f"{adapter_dir}: no adapter_config.json; run the finetune stage first")
    pcfg = PeftConfig.from_pretrained(str(adapter_dir))
    base_path = str(base_model or pcfg.base_model_name_or_path)
    if not Path(base_path).is_dir():
        raise StageError(f"{adapter_dir}: base model {base_path!r} is not a local folder; pass --base")
    base = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    batches = [tok(t, return_tensors="pt", add_special_tokens=False) for t in sample_texts]
    with torch.inference_mode():
        before = [model(**b).logits for b in batches]
        merged = model.merge_and_unload()
        after = [merged(**b).logits for b in batches]
    diffs = [float((a - b).abs().max()) for a, b in zip(before, after)]
    max_diff = max(diffs)
    report = {"max_abs_logit_diff": max_diff, "tolerance": tolerance, "samples": len(diffs),
              "tokens": int(sum(b["input_ids"].numel() for b in batches)), "base_model": base_path,
              "adapter": str(adapter_dir), "passed": max_diff <= tolerance}
    log.info("merge parity: max |logit diff| %.3g (tolerance %.1g) over %d samples", max_diff, tolerance, len(diffs))
    if max_diff > tolerance:
        raise ParityError(f"merge: max |logit diff| adapter vs merged = {max_diff:.3g} > tolerance {tolerance:g}; "
                          "the merged weights do not reproduce the adapter model")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    (out_dir / "merge_report.json").write_text(json.dumps(report, indent=2))
    return report


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "merge")
