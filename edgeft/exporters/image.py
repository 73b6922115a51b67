"""Export an image classifier (EfficientNet-Lite, HF image models) with a preset: ONNX, TorchScript, LiteRT, ExecuTorch.

Every graph has a static input of one image: ``1 x 3 x H x W`` (ONNX, TorchScript, ExecuTorch), or
``1 x H x W x 3`` for LiteRT (``litert_torch.to_channel_last_io``: channels-last in and out of the
graph, so the converter writes no TRANSPOSE and every op can map to an accelerator). Beside each
graph: ``image.json`` (format, layout, size, labels, preprocessing), read by
:mod:`edgeft.runtime.vision`.

Each export is checked against the PyTorch model on sample images, by the artifact's own runtime:
fp32 graphs by max |logit diff| (``tolerance`` relative to the logit scale) and label agreement;
int8 LiteRT graphs (dynamic-range or full-integer, ai-edge-quantizer calibrated on *training*
images) by label agreement with the fp32 model (``options.min_label_agreement``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from edgeft.artifacts import size_of
from edgeft.errors import ConfigError, ParityError, UnsupportedError
from edgeft.fileio import staged_dir

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "tflite", "pte")
OPSET = 17


def _meta(model_dir: Path, fmt: str, layout: str, extra: dict | None = None) -> dict:
    from edgeft.models.vision import labels, preprocessing

    pp = preprocessing(model_dir)
    return {"kind": "image-classifier", "format": fmt, "layout": layout, "size": pp.size,
            "input_shape": [1, pp.size, pp.size, 3] if layout == "nhwc" else [1, 3, pp.size, pp.size],
            "labels": labels(model_dir), "preprocessing": pp.to_dict(), **(extra or {})}


def _export_onnx(model, x, tmp: Path) -> None:
    import torch

    # The TorchScript-based exporter: a static conv net needs none of the dynamo exporter's features, and it
    # writes one self-contained file with the named input and output the runtimes use.
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(tmp / "model.onnx"), input_names=["pixel_values"],
                          output_names=["logits"], opset_version=OPSET, dynamo=False)


def _export_torchscript(model, x, tmp: Path) -> None:
    import torch

    with torch.inference_mode():
        traced = torch.jit.trace(model, (x,), check_trace=False)
    traced.save(str(tmp / "model.pt"))


def _export_pte(model, x, tmp: Path, options: dict) -> dict:
    import torch

    from edgeft.runtime.executorch import import_runtime

    import_runtime()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    q = options.get("quantization", "none")
    if q not in ("none", None):
        raise UnsupportedError(f"executorch preset quantization {q!r}: image classifiers export as fp32 XNNPACK "
                               "here; use executorch-fp32, or litert-image-int8 for a full-integer int8 graph")
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    (tmp / "model.pte").write_bytes(prog.buffer)
    (tmp / "executorch.json").write_text(json.dumps({"kind": "image-classifier", "quantization": "none",
                                                     "delegate": "xnnpack"}, indent=2))
    return {"delegate": "xnnpack", "quantization": "fp32"}


def _export_tflite(model, x, tmp: Path, opts, calibration: np.ndarray | None) -> dict:
    import torch

    import litert_torch

    from edgeft.exporters.litert import graph_info, quantize
    from edgeft.runtime.litert import require

    require()
    nhwc = litert_torch.to_channel_last_io(model, args=[0]).eval()
    t0 = time.perf_counter()
    float_path = tmp / ("model.tflite" if opts.quantize == "none" else ".float.tflite")
    with torch.inference_mode():
        edge = litert_torch.convert(nhwc, (x.permute(0, 2, 3, 1).contiguous(),))
    edge.export(str(float_path))
    rep: dict = {"convert_seconds": round(time.perf_counter() - t0, 1)}
    if opts.quantize != "none":
        if opts.quantize == "full" and (calibration is None or not len(calibration)):
            raise ConfigError("full-integer LiteRT export needs calibration images (the training split)")
        rows = [[np.ascontiguousarray(c[None].transpose(0, 2, 3, 1))] for c in (calibration if calibration is not None
                                                                              else [])]
        rep["quantize"] = quantize(float_path, tmp / "model.tflite", opts, rows)
        float_path.unlink()
    rep["graph"] = graph_info(tmp / "model.tflite")
    return rep


def _check(fmt: str, tmp: Path, ref: np.ndarray, x: np.ndarray, tolerance: float, quantized: bool,
           min_agreement: float, stage: str) -> dict:
    from edgeft.runtime.vision import ImageRuntime

    got = ImageRuntime(tmp, fmt, threads=2).logits(x)
    scale = float(np.abs(ref).max()) or 1.0
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    out = {"images": int(len(x)), "max_abs_diff": diff, "relative_diff": diff / scale, "label_agreement": agree}
    if quantized:
        out["min_label_agreement"] = min_agreement
        if agree < min_agreement:
            raise ParityError(f"{stage}: label agreement with the fp32 PyTorch model is {agree:.3f} on {len(x)} "
                              f"sample images, below options.min_label_agreement {min_agreement}")
    else:
        out["tolerance"] = tolerance
        if diff / scale > tolerance:
            raise ParityError(f"{stage}: max |logit diff| {diff:.3g} is {diff / scale:.3g} of the logit scale "
                              f"{scale:.3g}, over the tolerance {tolerance:g}")
    return out


def export_preset(model_dir: Path, out_dir: Path, preset, tolerance: float = 2e-3,
                  sample_images: np.ndarray | None = None, calibration_images: np.ndarray | None = None,
                  **_) -> dict:
    """Export the image classifier in ``model_dir`` with ``preset`` into ``out_dir`` (staged, then renamed).

    ``sample_images`` (eval split, preprocessed) drive the parity check; ``calibration_images`` (training
    split) calibrate a full-integer LiteRT graph.
    """
    import torch

    from edgeft.models.vision import load_image_classifier, preprocessing

    model_dir, out_dir, fmt = Path(model_dir), Path(out_dir), preset.format
    if fmt not in FORMATS:
        raise UnsupportedError(f"export preset {preset.name!r}: format {fmt!r} does not apply to image classifiers; "
                               f"use an onnx-image, torchscript, litert-image-* or executorch-fp32 preset")
    model = load_image_classifier(model_dir)
    size = preprocessing(model_dir).size
    if sample_images is None or not len(sample_images):
        sample_images = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(sample_images[:1]))
    ref = np.concatenate([model(torch.from_numpy(sample_images[i:i + 32])).detach().numpy()
                          for i in range(0, len(sample_images), 32)]).astype(np.float64)
    stage = f"export {preset.name}"
    t0 = time.perf_counter()
    opts = None
    with staged_dir(out_dir) as tmp:
        if fmt == "onnx":
            _export_onnx(model, x, tmp)
            rep, layout = {}, "nchw"
        elif fmt == "torchscript":
            _export_torchscript(model, x, tmp)
            rep, layout = {}, "nchw"
        elif fmt == "pte":
            rep, layout = _export_pte(model, x, tmp, dict(preset.options)), "nchw"
        else:
            from edgeft.exporters.litert import LiteRTOptions

            opts = LiteRTOptions.parse(dict(preset.options), f"export/{preset.name}.yaml")
            calib = None
            if calibration_images is not None:
                calib = calibration_images[:opts.calibration_examples]
            rep, layout = _export_tflite(model, x, tmp, opts, calib), "nhwc"
        meta = _meta(model_dir, fmt, layout, {"preset": preset.name})
        (tmp / "image.json").write_text(json.dumps(meta, indent=2))
        quantized = opts is not None and opts.quantize != "none"
        tol = (opts.tolerance if opts is not None and opts.tolerance else tolerance)
        rep["vs_reference"] = _check(fmt, tmp, ref, sample_images, tol, quantized,
                                     opts.min_label_agreement if opts is not None else 1.0, stage)
        rep.update({"preset": preset.name, "format": fmt, "layout": layout, "input_shape": meta["input_shape"],
                    "precision": (opts.precision if opts is not None else "fp32"),
                    "int8_mode": opts.int8_mode if opts is not None else None,
                    "size_bytes": size_of(tmp, fmt),
                    "seconds": round(time.perf_counter() - t0, 1)})
        (tmp / "export_report.json").write_text(json.dumps(rep, indent=2))
    log.info("%s: %s %s, %.1f MB, vs PyTorch %s", stage, fmt, rep["precision"], rep["size_bytes"] / 2**20,
             rep["vs_reference"])
    return rep
