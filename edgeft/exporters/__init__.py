"""Exporters: turn a merged PyTorch model into a deployable artifact, parity-checked against PyTorch."""

from edgeft.exporters.onnx import EXPORTERS, export
from edgeft.exporters.parity import OutputCheck, check_outputs

__all__ = ["EXPORTERS", "export", "OutputCheck", "check_outputs"]
