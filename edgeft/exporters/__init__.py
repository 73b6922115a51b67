"""Exporters: turn a merged PyTorch model into a deployable artifact, parity-checked against PyTorch."""

import logging

from edgeft.config.schema import ExportPreset
from edgeft.exporters import onnx as _onnx
from edgeft.exporters.parity import OutputCheck, check_outputs
from edgeft.exporters.registry import EXPORTERS
from edgeft.exporters import torchscript as _torchscript  # noqa: F401  (registers)
from edgeft.exporters import genai as _genai  # noqa: F401  (registers "genai")
from edgeft.exporters import gguf as _gguf  # noqa: F401  (registers "gguf")
from edgeft.exporters import executorch as _executorch  # registers "pte" (imports executorch lazily)
from edgeft.exporters import litert as _litert  # registers "tflite" (imports the LiteRT packages lazily)


def export(model_dir, out_dir, preset="onnx-kv", name: str | None = None, **kwargs) -> dict:
    """Export with a preset (a name from ``export/``, or one already loaded) and describe the result in
    ``out_dir/artifact.json`` (:mod:`edgeft.artifacts`; ``name`` defaults to the preset's).

    Image classifiers go to :mod:`edgeft.exporters.image` whatever the format; otherwise TorchScript presets
    (decoders, encoders and classifiers) go to :mod:`edgeft.exporters.torchscript`, ExecuTorch ones (``pte``)
    to :mod:`edgeft.exporters.executorch`, LiteRT ones (``tflite``) to :mod:`edgeft.exporters.litert`, the rest
    to :func:`edgeft.exporters.onnx.export`."""
    from edgeft.artifacts import model_kind

    p = preset if isinstance(preset, ExportPreset) else load_checked_preset(preset)
    kind = model_kind(model_dir)
    report = _export(model_dir, out_dir, p, kind, **kwargs)
    describe_export(out_dir, p, kind, name)
    return report


def _export(model_dir, out_dir, p: ExportPreset, kind: str, **kwargs) -> dict:
    if kind == "image-classifier":  # pixels in, logits out: one exporter module for every format
        from edgeft.exporters import image

        return image.export_preset(model_dir, out_dir, p, **kwargs)
    if p.format == "torchscript":
        return _torchscript.export_preset(model_dir, out_dir, p, **kwargs)
    if p.format == "pte":  # ExecuTorch: causal LMs (sample/quality ids) and classifiers (texts, static shapes)
        keep = ("tolerance", "sample_ids", "quality_ids", "sample_texts", "static_shapes")
        return _executorch.export_preset(model_dir, out_dir, p, **{k: kwargs[k] for k in keep if k in kwargs})
    if p.format == "tflite":  # BERT-family classifiers and encoders; calibration_texts: training texts
        return _litert.export_preset(model_dir, out_dir, p, **kwargs)
    if p.format in ("genai", "gguf"):  # options come from the preset; quality_ids: held-out windows
        names = ("tolerance", "sample_ids", "quality_ids") + (("calibration_ids",) if p.format == "gguf" else ())
        keep = {k: kwargs[k] for k in names if kwargs.get(k) is not None}
        return EXPORTERS.get(p.format, f"export preset {p.name}: format")(
            model_dir, out_dir, opset=p.opset, with_past=p.with_past, **keep, **p.options)
    return _onnx.export(model_dir, out_dir, preset=p, **kwargs)


def describe_export(out_dir, preset: ExportPreset, kind: str, name: str | None = None):
    """Write ``out_dir/artifact.json`` for what ``preset`` exported there: precision and int8 mode come from the
    preset's options (its exporter's options model says them; fp32 when it has no such property)."""
    from edgeft import artifacts

    model = EXPORTERS.options_of(preset.format)
    opts = model.of(preset.options) if model is not None else None
    return artifacts.write(out_dir, name=name or preset.name, kind=kind, format=preset.format, stage="export",
                           producer=preset.name, precision=getattr(opts, "precision", "fp32"),
                           int8_mode=getattr(opts, "int8_mode", None),
                           options=opts if opts is not None else preset.options)


def load_checked_preset(name_or_path):
    """A preset (:func:`edgeft.config.loader.load_preset`) with its options checked against its exporter's
    typed options model, the message naming the preset file and key."""
    from edgeft.config.loader import check_options, load_preset, preset_source

    p = load_preset(name_or_path)
    model = EXPORTERS.options_of(p.format)
    if model is None:
        logging.getLogger(__name__).debug("%s: exporter format %r registers no options model; options passed "
                                          "through unchecked", preset_source(name_or_path), p.format)
    else:
        check_options(model, p.options, preset_source(name_or_path), "options", f"{p.format} export")
    return p


__all__ = ["EXPORTERS", "describe_export", "export", "load_checked_preset", "OutputCheck", "check_outputs"]
