"""Merge stage: turn what fine-tuning wrote into one plain fp32 model and prove it computes the same logits.

What happens depends on the fine-tuning method (``edgeft.finetune.METHODS[...].merge``, recorded
next to the result in ``edgeft_method.json``):

* ``merge`` (lora, qlora, dora, ia3): fold the PEFT adapter into an un-quantized fp32 reload of its
  base; parity = adapter model (base + adapter, un-merged) vs merged model.
* ``copy`` (full, freeze, gradual-unfreeze, bitfit): the weights are already whole; they are
  re-saved as fp32 safetensors and parity = the fine-tuned folder vs the written copy, reloaded.

A fine-tune trained with ``finetune.qat`` (its marker says so) is compared as it trained, with its
weights fake-quantized to int4; on the min/max grid the merged weights are written snapped onto that
grid (the trained model; its float weights alone can be far from it), see :func:`_snap`.
* ``refuse`` (prompt-tuning, prefix-tuning, p-tuning, adapter): :class:`UnsupportedError` saying
  why (the learned pieces are not weights of the traced architecture) and what to use instead.

Both tasks work: a causal LM and a sequence classifier (read from the adapter / model config).
Outputs are written to a temp folder next to ``out_dir`` and moved in only after parity passed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from edgeft.errors import ParityError, StageError, UnsupportedError

log = logging.getLogger(__name__)

__all__ = ["merge", "merge_mode"]


def merge_mode(trained_dir: Path) -> tuple[str, str, str]:
    """(mode, method name, note) for a finetune result folder; mode is merge | copy | refuse."""
    from edgeft.finetune import METHODS
    from edgeft.finetune.registry import read_marker

    trained_dir = Path(trained_dir)
    info = read_marker(trained_dir)
    name = info.get("method", "")
    if name in METHODS:
        m = METHODS.get(name)
        return m.merge, name, m.merge_note
    if info.get("merge"):
        return info["merge"], name, ""
    if (trained_dir / "adapter_config.json").is_file():
        from peft import PeftConfig

        try:
            pcfg = PeftConfig.from_pretrained(str(trained_dir))
        except Exception as e:  # noqa: BLE001 - not a PEFT adapter folder
            raise StageError(f"{trained_dir}: adapter_config.json is not a PEFT adapter ({e})") from e
        if pcfg.is_prompt_learning:
            from edgeft.finetune.methods._prompt import note

            kind = str(pcfg.peft_type).rsplit(".", 1)[-1].lower()
            return "refuse", kind, note(kind)
        return "merge", str(pcfg.peft_type).rsplit(".", 1)[-1].lower(), ""
    if (trained_dir / "config.json").is_file():
        return "copy", "", ""
    raise StageError(f"{trained_dir}: neither a PEFT adapter (adapter_config.json) nor a model (config.json); "
                     "run the finetune stage first")


def _task(model) -> str:
    from edgeft.finetune.registry import task_of

    return task_of(model)


def _logits(model, batches):
    return [model(**b).logits for b in batches]


def merge(adapter_dir: Path, out_dir: Path, base_model: Path | None = None, tolerance: float = 2e-3,
          sample_texts: Sequence[str] = ("Hello, how are you?",)) -> dict:
    """Make ``out_dir`` a plain fp32 model (safetensors + tokenizer) from a finetune result folder.

    ``adapter_dir`` is ``finetune/adapter`` or ``finetune/model``; ``base_model`` is the base folder
    for adapters (default: the one the adapter names). Parity over ``sample_texts`` above
    ``tolerance`` raises :class:`ParityError` and writes nothing. QLoRA adapters are merged into an
    fp32 reload of the base, never into nf4/int8 weights.
    """
    import torch
    from transformers import AutoTokenizer

    from edgeft.finetune.registry import load_trained

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not adapter_dir.is_dir():
        raise StageError(f"{adapter_dir}: no such folder; run the finetune stage first")
    mode, method, note = merge_mode(adapter_dir)
    if mode == "refuse":
        raise UnsupportedError(f"merge: {adapter_dir} was trained with method {method}: {note}")
    base_path = None
    if mode == "merge":
        from peft import PeftConfig

        base_path = str(base_model or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path)
        if not Path(base_path).is_dir():
            raise StageError(f"{adapter_dir}: base model {base_path!r} is not a local folder; pass --base")
    model = load_trained(adapter_dir, base_path)
    qat = _qat_config(adapter_dir)
    task = _task(model)
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    # causal-LM samples are rendered conversations that carry their special tokens; a classifier needs [CLS]/[SEP]
    batches = [tok(t, return_tensors="pt", add_special_tokens=task == "seq-cls") for t in sample_texts]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with torch.inference_mode():
            # a QAT fine-tune whose weights will be snapped: compare with what it computed in training
            snaps = qat is not None and not qat.symmetric
            before = _qat_logits(model, batches, qat) if snaps else _logits(model, batches)
            if mode == "merge":
                merged = model.merge_and_unload()
                snapped = _snap(merged, qat)
                after = _logits(merged, batches)
                merged.save_pretrained(str(staging), safe_serialization=True)
            else:
                snapped = _snap(model, qat)
                model.to(torch.float32).save_pretrained(str(staging), safe_serialization=True)
                after = _logits(load_trained(staging), batches)
        diffs = [float((a - b).abs().max()) for a, b in zip(before, after)]
        max_diff = max(diffs)
        report = {"mode": mode, "method": method, "task": task, "max_abs_logit_diff": max_diff,
                  "tolerance": tolerance, "samples": len(diffs),
                  "tokens": int(sum(b["input_ids"].numel() for b in batches)), "base_model": base_path,
                  "adapter": str(adapter_dir), "passed": max_diff <= tolerance}
        what = "adapter vs merged" if mode == "merge" else "fine-tuned vs copied"
        if qat is not None:
            report["qat"] = {"group_size": qat.group_size, "symmetric": qat.symmetric, "snapped_linears": snapped}
            what += (" (both on the QAT int4 grid: fake-quantized vs snapped weights)" if snapped
                     else " (float weights; not snapped: rounding snapped weights again on the symmetric grid "
                          "moves them, so int4-torchao rounds the merged weights as training did)")
        log.info("merge (%s) parity: max |logit diff| %s %.3g (tolerance %.1g) over %d samples", mode, what,
                 max_diff, tolerance, len(diffs))
        if max_diff > tolerance:
            raise ParityError(f"merge: max |logit diff| {what} = {max_diff:.3g} > tolerance {tolerance:g}; "
                              f"the {'merged' if mode == 'merge' else 'copied'} weights do not reproduce the "
                              "fine-tuned model")
        tok.save_pretrained(str(staging))
        (staging / "merge_report.json").write_text(json.dumps(report, indent=2))
        _move_into(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _qat_config(trained_dir: Path):
    """The QatConfig a ``finetune.qat`` run recorded in its marker (weights only), else None."""
    from edgeft.finetune.registry import read_marker

    info = read_marker(trained_dir).get("qat")
    if not info:
        return None
    from edgeft.config.schema import QatConfig

    return QatConfig(group_size=info["group_size"], symmetric=info.get("symmetric", True))


def _qat_logits(model, batches, qat):
    """Logits of the fine-tuned model as quantization-aware training computed them (int4 fake-quantized weights)."""
    from edgeft.finetune.qat import prepare

    inst = prepare(model, qat)
    try:
        return _logits(model, batches)
    finally:
        inst.remove()


def _snap(model, qat) -> int:
    """A QAT model's float weights are not the model it trained (the optimizer only ever saw them rounded, and on a
    base already on the grid it moves them freely within a step): write the weights on the grid instead, so the
    merged model, the fp32 export and the int4 artifact are one model. Only for the min/max grid, which rounding
    the snapped weights again reproduces exactly; returns how many weights were snapped."""
    if qat is None or qat.symmetric:
        return 0
    from edgeft.finetune.qat import snap_to_grid

    return snap_to_grid(model, qat)


def _move_into(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``, or move its files into an existing ``out_dir`` (a stage's temp folder)."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for f in staging.iterdir():
        target = out_dir / f.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "merge")
