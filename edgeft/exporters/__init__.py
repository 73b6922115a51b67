"""Exporters: turn a merged PyTorch model into a deployable artifact, parity-checked against PyTorch."""

from edgeft.exporters import onnx as _onnx
from edgeft.exporters.onnx import EXPORTERS
from edgeft.exporters.parity import OutputCheck, check_outputs
from edgeft.exporters import torchscript as _torchscript  # noqa: F401  (registers)
from edgeft.exporters import genai as _genai  # noqa: F401  (registers "genai")
from edgeft.exporters import gguf as _gguf  # noqa: F401  (registers "gguf")


def export(model_dir, out_dir, preset: str = "onnx-kv", **kwargs) -> dict:
    """Export with a named preset from ``export/``: TorchScript presets (decoders, encoders and classifiers)
    go to :mod:`edgeft.exporters.torchscript`, LiteRT ones to :mod:`edgeft.exporters.litert`, the rest to :func:`edgeft.exporters.onnx.export`."""
    from edgeft.config.loader import load_preset

    p = load_preset(preset)
    if p.format == "torchscript":
        return _torchscript.export_preset(model_dir, out_dir, p, **kwargs)
    if p.format == "tflite":  # BERT-family classifiers and encoders; calibration_texts: training texts
        from edgeft.exporters import litert

        return litert.export_preset(model_dir, out_dir, p, **kwargs)
    if p.format in ("genai", "gguf"):  # options come from the preset; quality_ids: held-out windows
        keep = {k: kwargs[k] for k in ("tolerance", "sample_ids", "quality_ids") if kwargs.get(k) is not None}
        return EXPORTERS.get(p.format, f"export preset {preset}: format")(
            model_dir, out_dir, opset=p.opset, with_past=p.with_past, **keep, **p.options)
    return _onnx.export(model_dir, out_dir, preset=preset, **kwargs)


__all__ = ["EXPORTERS", "export", "OutputCheck", "check_outputs"]
