"""ONNX Runtime dynamic int8: int8 weights, activations quantized at run time (MatMulInteger).

Measured on SmolLM2-135M it is lossy (activation outliers); prefer int8-weight on CPUs and a
static scheme on NPUs. Kept because it is the most widely deployed ORT int8 path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.quantize.registry import SCHEMES, Scheme

OPTIONS = {
    "per_channel": (True, "per-output-channel weight scales"),
    "reduce_range": (False, "7-bit weights (for older x86 without VNNI)"),
    "nodes_to_exclude": ([], "node names left in fp32"),
}


def apply(in_onnx: Path, out_onnx: Path, per_channel=True, reduce_range=False, nodes_to_exclude=()) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    quantize_dynamic(str(in_onnx), str(out_onnx), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(nodes_to_exclude))
    return {"per_channel": per_channel, "reduce_range": reduce_range, "nodes_to_exclude": list(nodes_to_exclude)}


SCHEMES.register("int8-dynamic")(Scheme("int8-dynamic", "ORT dynamic int8 (MatMulInteger)", "int8", "dynamic",
                                        apply, OPTIONS))
