"""ONNX export with KV cache through optimum-onnx, then a two-step parity check against PyTorch.

Step 1 runs the prompt with an empty cache, step 2 feeds one more token with the returned cache,
so both the prefill path and the cached decode path are checked (logits and every present.*).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from edgeft.artifacts import require_hf_folder, size_of
from edgeft.config.options import Options
from edgeft.errors import UnsupportedError, optional_import
from edgeft.exporters.parity import check_outputs
from edgeft.exporters.registry import EXPORTERS

log = logging.getLogger(__name__)


def _torch_reference(model_dir: Path, ids: np.ndarray):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        t = torch.as_tensor(ids)
        out1 = model(input_ids=t[:, :-1], use_cache=True)
        past = out1.past_key_values
        ref1 = {"logits": out1.logits.numpy()}
        for i, (k, v) in enumerate(kv_pairs(past)):
            ref1[f"present.{i}.key"] = k.numpy().copy()
            ref1[f"present.{i}.value"] = v.numpy().copy()
        out2 = model(input_ids=t[:, -1:], past_key_values=past, use_cache=True)
        ref2 = {"logits": out2.logits.numpy()}
        for i, (k, v) in enumerate(kv_pairs(out2.past_key_values)):
            ref2[f"present.{i}.key"] = k.numpy()
            ref2[f"present.{i}.value"] = v.numpy()
    return ref1, ref2


def kv_pairs(past):
    """[(key, value)] per layer of a transformers KV cache, whichever of its shapes this version returns."""
    if hasattr(past, "layers"):  # transformers >= 4.56 Cache objects
        return [(layer.keys, layer.values) for layer in past.layers]
    if hasattr(past, "key_cache"):
        return list(zip(past.key_cache, past.value_cache))
    return [(k, v) for k, v in past]


def parity(model_dir: Path, onnx_dir: Path, ids: np.ndarray, tolerance: float) -> list[dict]:
    """Two-step (prefill + one cached decode step) parity of every output vs PyTorch."""
    from edgeft.runtime.lm import OrtLM

    ref1, ref2 = _torch_reference(model_dir, ids)
    lm = OrtLM(onnx_dir, threads=1)
    mask1 = np.ones_like(ids[:, :-1])
    logits1, past = lm.step(ids[:, :-1], mask1, lm.empty_past(ids.shape[0]))
    cand1 = {"logits": logits1, **{k.replace("past_key_values", "present"): v for k, v in past.items()}}
    logits2, past2 = lm.step(ids[:, -1:], np.ones_like(ids), past)
    cand2 = {"logits": logits2, **{k.replace("past_key_values", "present"): v for k, v in past2.items()}}
    checks = check_outputs("export (prefill)", ref1, cand1, tolerance)
    checks += check_outputs("export (cached decode step)", ref2, cand2, tolerance)
    return [dict(c.to_dict(), step=("prefill" if i < len(ref1) else "decode")) for i, c in enumerate(checks)]


class OnnxOptions(Options):
    """Options of onnx presets: none (opset and with_past are preset fields)."""

    owner: ClassVar[str] = "onnx export"


@EXPORTERS.register("onnx", options=OnnxOptions)
def export_onnx(model_dir: Path, out_dir: Path, opset: int = 18, with_past: bool = True,
                tolerance: float = 2e-3, sample_ids: Sequence[int] | None = None) -> dict:
    """Export ``model_dir`` (HF causal LM folder) to ``out_dir/model.onnx`` and check parity."""
    main_export = optional_import("optimum.exporters.onnx", "ONNX export needs optimum-onnx: pip install "
                                                            "'optimum-onnx[onnxruntime]'").main_export
    model_dir, out_dir = require_hf_folder(model_dir), Path(out_dir)
    task = "text-generation-with-past" if with_past else "text-generation"
    t0 = time.perf_counter()
    main_export(str(model_dir), output=str(out_dir), task=task, opset=opset, device="cpu", do_validation=False)
    seconds = time.perf_counter() - t0
    if sample_ids is None:
        sample_ids = list(range(100, 116))
    ids = np.asarray([list(sample_ids)], dtype=np.int64)
    checks = parity(model_dir, out_dir, ids, tolerance)
    report = {"format": "onnx", "opset": opset, "with_past": with_past, "export_seconds": seconds,
              "tolerance": tolerance, "parity": checks,
              "max_abs_diff": max(c["max_abs_diff"] for c in checks),
              "size_bytes": size_of(out_dir, "onnx")}
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def export(model_dir: Path, out_dir: Path, preset="onnx-kv", tolerance: float = 2e-3,
           sample_ids: Sequence[int] | None = None, sample_texts: Sequence[str] | None = None,
           static_shapes=None) -> dict:
    """Export with a preset from ``export/`` (its name, or the loaded preset; see ``edgeft export --help``).

    A sequence classifier (``*ForSequenceClassification``) goes through
    :func:`edgeft.exporters.onnx_encoder.export_classifier` (parity on ``sample_texts``; optional
    ``static_shapes`` with ``batch`` and ``seq``).
    """
    from edgeft.artifacts import model_kind
    from edgeft.config.loader import load_preset
    from edgeft.exporters import onnx_encoder

    p = load_preset(preset) if isinstance(preset, (str, os.PathLike)) else preset
    if model_kind(model_dir, default="causal-lm") == "classifier":
        return onnx_encoder.export_classifier(model_dir, out_dir, opset=p.opset, tolerance=tolerance,
                                              sample_texts=sample_texts, static_shapes=static_shapes)
    if static_shapes is not None:
        raise UnsupportedError("export.static_shapes applies to encoder/classifier exports; a decoder with a KV "
                               "cache grows its inputs every step (remove export.static_shapes)")
    fn = EXPORTERS.get(p.format, f"export preset {p.name}: format")
    return fn(model_dir, out_dir, opset=p.opset, with_past=p.with_past, tolerance=tolerance, sample_ids=sample_ids)
