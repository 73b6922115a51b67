"""ONNX export of a sequence classifier (optimum, task ``text-classification``) with a logits parity check.

The graph takes ``input_ids`` and ``attention_mask`` and returns ``logits``. ``token_type_ids``
is left out of the graph inputs on purpose: a single-text classifier always feeds segment 0,
which the model fills in itself when the input is absent, and one input fewer is one less
thing a device runtime or a calibration reader has to feed. This is done the optimum way, with
a config subclass that overrides only ``inputs``.

With ``static_shapes`` the dynamic graph is kept in ``out_dir/dynamic/`` (the input quantization
and calibration work from) and ``out_dir/model.onnx`` gets every input dim fixed (batch x seq,
as NPUs and TPUs need), with the shape computations folded away by ONNX Runtime's basic
(standard-ONNX) optimizations. Both graphs are parity-checked against PyTorch.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.artifacts import require_hf_folder, size_of
from edgeft.errors import UnsupportedError, optional_import
from edgeft.exporters.parity import check_outputs

log = logging.getLogger(__name__)

SINGLE_TEXT_INPUTS = ("input_ids", "attention_mask")


def _onnx_config(model_dir: Path):
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    try:
        ctor = TasksManager.get_exporter_config_constructor("onnx", task="text-classification",
                                                            model_type=config.model_type, library_name="transformers")
    except (KeyError, ValueError) as e:
        raise UnsupportedError(f"{model_dir}: optimum has no ONNX text-classification export for model type "
                               f"{config.model_type!r} ({e})") from e
    base = ctor(config, task="text-classification")

    class SingleTextConfig(type(base)):
        @property
        def inputs(self):
            return {k: v for k, v in super().inputs.items() if k in SINGLE_TEXT_INPUTS}

    return SingleTextConfig(config, task="text-classification")


def torch_logits(model_dir: Path, tokenizer, texts: Sequence[str], max_length: int = 128, batch_size: int = 32):
    """Logits of the PyTorch classifier in ``model_dir`` (padded batches, padding masked)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return module_logits(model, tokenizer, texts, max_length, batch_size)


def module_logits(model, tokenizer, texts: Sequence[str], max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length,
                            return_tensors="pt", padding=True)
            out.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def onnx_logits(path: Path, tokenizer, texts: Sequence[str], max_length: int = 128, threads: int = 2,
                batch_size: int = 32) -> np.ndarray:
    """Logits of an ONNX classifier on ``texts``: padded batches, or one padded row at a time when the
    graph's input shapes are fixed (then ``max_length`` is the graph's sequence length)."""
    import onnxruntime as ort

    from edgeft.runtime.lm import find_onnx, session_options

    sess = ort.InferenceSession(str(find_onnx(Path(path))), session_options(threads),
                                providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    fixed = fixed_shape(inputs.get("input_ids"))
    if fixed is not None:
        batch_size, max_length = fixed
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        n = len(chunk)
        if fixed is not None and n < batch_size:
            chunk += [""] * (batch_size - n)
        enc = tokenizer(chunk, truncation=True, max_length=max_length, return_tensors="np",
                        padding="max_length" if fixed is not None else True)
        feeds = {k: enc[k].astype(np.int64) for k in inputs if k in enc}
        if "token_type_ids" in inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        out.append(sess.run(["logits"], feeds)[0][:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fixed_shape(shape) -> tuple[int, int] | None:
    """(batch, seq) when an input shape is two fixed ints, else None."""
    if shape is not None and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape):
        return int(shape[0]), int(shape[1])
    return None


def fix_shapes(src: Path, dst: Path, batch: int, seq: int) -> dict:
    """Write ``src`` with every graph input fixed to [batch, seq], shape arithmetic folded into constants.

    ``make_input_shape_fixed`` is ONNX Runtime's own tool for this; the folding is ORT's basic
    level (constant folding and redundant-node removal, standard ONNX ops only), saved back to a file.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for name in names:
        make_input_shape_fixed(model.graph, name, [batch, seq])
    model = onnx.shape_inference.infer_shapes(model)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".fixed-tmp.onnx")
    onnx.save(model, str(tmp))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
    tmp.unlink()
    before = len(model.graph.node)
    after = len(onnx.load(str(dst), load_external_data=False).graph.node)
    return {"batch": batch, "seq": seq, "inputs": names, "nodes_before": before, "nodes_after": after}


def static_parity(dynamic: Path, static: Path, tokenizer, texts: Sequence[str], tolerance: float,
                  stage: str = "static shapes", relative: float = 0.0) -> dict:
    """Logits of the fixed-shape graph vs the dynamic one on ``texts`` (padded vs unpadded inputs).

    The tolerance is ``max(tolerance, relative * max(1, max |logit|))``: a quantized graph is run by
    ONNX Runtime with different kernel fusions once its shapes are fixed (integer kernels vs
    dequantize-then-float), so the two legitimately differ by a few int8 rounding steps.
    """
    a = onnx_logits(static, tokenizer, texts, threads=1)
    b = onnx_logits(dynamic, tokenizer, texts, max_length=_seq_of(static), threads=1)
    tol = max(tolerance, relative * max(1.0, float(np.abs(b).max()) if b.size else 1.0))
    checks = check_outputs(f"{stage} vs dynamic", {"logits": b}, {"logits": a}, tol)
    return dict(checks[0].to_dict(), label_agreement=float((a.argmax(-1) == b.argmax(-1)).mean()), samples=len(texts))


def _seq_of(path: Path) -> int:
    import onnx

    from edgeft.runtime.lm import find_onnx

    g = onnx.load(str(find_onnx(Path(path))), load_external_data=False).graph
    return int(g.input[0].type.tensor_type.shape.dim[1].dim_value)


def export_classifier(model_dir: Path, out_dir: Path, opset: int = 20, tolerance: float = 2e-3,
                      sample_texts: Sequence[str] | None = None, static_shapes=None) -> dict:
    """Export the classifier in ``model_dir`` to ``out_dir/model.onnx`` and check logits vs PyTorch."""
    main_export = optional_import("optimum.exporters.onnx", "ONNX export needs optimum-onnx: pip install "
                                                            "'optimum-onnx[onnxruntime]'").main_export
    from transformers import AutoTokenizer

    model_dir, out_dir = require_hf_folder(model_dir), Path(out_dir)
    texts = list(sample_texts or ["a gripping , funny film", "dull and lifeless", "it is what it is"])
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dyn_dir = out_dir / "dynamic" if static_shapes is not None else out_dir
    t0 = time.perf_counter()
    main_export(str(model_dir), output=str(dyn_dir), task="text-classification", opset=opset, device="cpu",
                do_validation=False, custom_onnx_configs={"model": _onnx_config(model_dir)})
    seconds = time.perf_counter() - t0
    max_len = static_shapes.seq if static_shapes is not None else 128
    ref = torch_logits(model_dir, tok, texts, max_len)
    got = onnx_logits(dyn_dir, tok, texts, max_length=max_len, threads=1)
    checks = [c.to_dict() for c in check_outputs("export (classifier logits)", {"logits": ref}, {"logits": got},
                                                 tolerance)]
    report = {"format": "onnx", "task": "text-classification", "opset": opset, "with_past": False,
              "inputs": list(SINGLE_TEXT_INPUTS), "export_seconds": seconds, "tolerance": tolerance,
              "parity": checks, "samples": len(texts)}
    if static_shapes is not None:
        for f in dyn_dir.iterdir():  # tokenizer and config travel with the fixed graph
            if f.is_file() and f.suffix != ".onnx" and "onnx_data" not in f.name:
                shutil.copy2(f, out_dir / f.name)
        fixed = fix_shapes(dyn_dir / "model.onnx", out_dir / "model.onnx", static_shapes.batch, static_shapes.seq)
        ref_pad = torch_logits(model_dir, tok, texts, static_shapes.seq)
        got_pad = onnx_logits(out_dir, tok, texts, threads=1)
        checks.append(dict(check_outputs("export (static-shape logits)", {"logits": ref_pad}, {"logits": got_pad},
                                         tolerance)[0].to_dict(), name="logits (static shapes)"))
        report["static_shapes"] = fixed
    report["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
    report["size_bytes"] = size_of(out_dir, "onnx")
    log.info("export: classifier logits parity max |diff| %.3g (tolerance %g)%s", report["max_abs_diff"], tolerance,
             f", static shapes {static_shapes.batch}x{static_shapes.seq}" if static_shapes is not None else "")
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report
