"""Scheme registry: name -> Scheme(apply, precision, int8_mode, description, options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edgeft.registry import Registry


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    precision: str  # weight precision of the result: int8 | int4
    int8_mode: str | None  # dynamic | static | full-integer | weight-only (None for int4)
    apply: Callable[..., dict]  # (in_onnx: Path, out_onnx: Path, **options) -> dict of what was done
    options: dict = field(default_factory=dict)  # option -> (default, description)
    needs_calibration: bool = False  # apply() then also gets calibration=[token-id windows]
    # What apply() reads and writes. "onnx": (in_onnx file, out_onnx file). "pytorch" input: (HF model
    # folder, output folder) -- the merged model, before export; the output folder already holds the
    # tokenizer and config. output_format "pytorch" (an HF folder from_pretrained loads) or "torchscript".
    input_format: str = "onnx"  # onnx | pytorch
    output_format: str = "onnx"  # onnx | pytorch | torchscript


SCHEMES: Registry[Scheme] = Registry("quantization scheme")
