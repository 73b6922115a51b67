"""Weight-only quantization of MatMul weights to ORT's MatMulNBits (int4 or int8, block-wise).

Activations stay fp32, so the loss is only the weight rounding. RTN is ORT's default
quantizer; HQQ (half-quadratic) optimizes scales/zero points per block without calibration data.
The tied embedding / LM head is left in fp32 by ORT's quantizer (it only rewrites MatMuls whose
weight is an initializer of the right layout); the report records the node counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.errors import ConfigError
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)

OPTIONS = {
    "block_size": (32, "weights per quantization block (16, 32, 64, 128)"),
    "symmetric": (True, "symmetric blocks (no zero point)"),
    "accuracy_level": (4, "MatMulNBits compute precision for activations: 0 default, 1 fp32, 4 int8"),
    "nodes_to_exclude": ([], "MatMul node names kept in fp32"),
}


def _quantize(in_onnx: Path, out_onnx: Path, bits: int, algo: str, block_size=32, symmetric=True,
              accuracy_level=4, nodes_to_exclude=()) -> dict:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if block_size not in (16, 32, 64, 128, 256):
        raise ConfigError(f"quantize option block_size={block_size}: must be one of 16, 32, 64, 128, 256")
    model = onnx.load(str(in_onnx))
    algo_config = None
    if algo == "hqq":
        algo_config = mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    elif algo == "rtn":
        algo_config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                                       accuracy_level=accuracy_level, bits=bits)
    q = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                 accuracy_level=accuracy_level, nodes_to_exclude=list(nodes_to_exclude),
                                 algo_config=algo_config)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))  # ORT logs per node at INFO
    q.process()
    q.model.save_model_to_file(str(out_onnx), use_external_data_format=False)
    nodes = q.model.model.graph.node
    return {"bits": bits, "algo": algo, "block_size": block_size, "symmetric": symmetric,
            "accuracy_level": accuracy_level,
            "quantized_matmuls": sum(1 for n in nodes if n.op_type == "MatMulNBits"),
            "fp32_matmuls": sum(1 for n in nodes if n.op_type == "MatMul")}


def rtn4(in_onnx, out_onnx, **opts):
    return _quantize(in_onnx, out_onnx, 4, "rtn", **opts)


def rtn8(in_onnx, out_onnx, **opts):
    return _quantize(in_onnx, out_onnx, 8, "rtn", **opts)


def hqq4(in_onnx, out_onnx, **opts):
    opts.pop("symmetric", None)
    return _quantize(in_onnx, out_onnx, 4, "hqq", symmetric=False, **opts)


SCHEMES.register("int4-rtn")(Scheme("int4-rtn", "int4 weight-only MatMulNBits, round-to-nearest", "int4", None,
                                    rtn4, OPTIONS))
SCHEMES.register("int4-hqq")(Scheme("int4-hqq", "int4 weight-only MatMulNBits, HQQ (asymmetric)", "int4", None,
                                    hqq4, OPTIONS))
SCHEMES.register("int8-weight")(Scheme("int8-weight", "int8 weight-only MatMulNBits (bits=8), activations fp32",
                                       "int8", "weight-only", rtn8, OPTIONS))
