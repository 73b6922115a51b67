"""ONNX Runtime dynamic int8: int8 weights, activations quantized at run time (MatMulInteger).

Measured on SmolLM2-135M it is lossy (activation outliers); prefer int8-weight on CPUs and a
static scheme on NPUs. Kept because it is the most widely deployed ORT int8 path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from edgeft.config.options import Options
from edgeft.quantize.registry import SCHEMES, Scheme


class DynamicInt8Options(Options):
    """Options of int8-dynamic."""

    owner: ClassVar[str] = "quantize scheme int8-dynamic"
    per_channel: bool = Field(True, description="per-output-channel weight scales")
    reduce_range: bool = Field(False, description="7-bit weights (for older x86 without VNNI)")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names left in fp32")


def apply(in_onnx: Path, out_onnx: Path, opts: DynamicInt8Options | None = None, **options) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    o = DynamicInt8Options.of(opts, **options)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    quantize_dynamic(str(in_onnx), str(out_onnx), op_types_to_quantize=["MatMul"], per_channel=o.per_channel,
                     reduce_range=o.reduce_range, weight_type=QuantType.QInt8,
                     nodes_to_exclude=list(o.nodes_to_exclude))
    return o.model_dump()


SCHEMES.register("int8-dynamic")(Scheme("int8-dynamic", "ORT dynamic int8 (MatMulInteger)", "int8", "dynamic",
                                        apply, DynamicInt8Options))
