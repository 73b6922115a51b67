"""Cost of MatMulNBits' zero-point forms on this CPU: none (symmetric), uint4 (packed) and float.

Usage::

    python benchmarks/matmulnbits_zero_points.py [--k 576] [--n 1536] [--threads 2]

Builds a chain of 20 int4 MatMulNBits nodes (block 32, random codes, K x N each) per variant and
times one decode-shaped row (1 x 1 x K) through it, at accuracy level 0 (fp32 activations) and 4
(int8 activations). Prints microseconds per MatMul. Float zero points are what an exact fit of an
asymmetric 4-bit grid with float offsets (HQQ, GGUF Q4_1) needs in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _session(k: int, n: int, zero_points: str, accuracy_level: int, threads: int, rng):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    block = 32
    kb = k // block
    inits = [numpy_helper.from_array(rng.integers(0, 255, (n, kb, block // 2), dtype=np.uint8), "B"),
             numpy_helper.from_array(rng.random((n, kb), dtype=np.float32) * 0.01, "S")]
    if zero_points == "uint4":
        inits.append(numpy_helper.from_array(rng.integers(0, 255, (n, (kb + 1) // 2), dtype=np.uint8), "Z"))
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.random((n, kb), dtype=np.float32) * 8, "Z"))
    weights = [i.name for i in inits]
    inits += [numpy_helper.from_array(np.array(v, np.int64), name)
              for v, name in (([0], "st"), ([k], "en"), ([-1], "ax"))]
    nodes, prev = [], "x"
    for i in range(20):  # each output sliced back to K columns feeds the next MatMul
        nodes.append(helper.make_node("MatMulNBits", [prev, *weights], [f"y{i}"], domain="com.microsoft", K=k, N=n,
                                      bits=4, block_size=block, accuracy_level=accuracy_level))
        nodes.append(helper.make_node("Slice", [f"y{i}", "st", "en", "ax"], [f"s{i}"]))
        prev = f"s{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=576)
    p.add_argument("--n", type=int, default=1536)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, a.k), dtype=np.float32)
    print(f"MatMulNBits int4 b32, {a.k}x{a.n}, {a.threads} threads: microseconds per MatMul")
    for zero_points in ("none", "uint4", "float"):
        for level in (0, 4):
            s = _session(a.k, a.n, zero_points, level, a.threads, rng)
            for _ in range(20):
                s.run(None, {"x": x})
            t = time.perf_counter()
            for _ in range(a.runs):
                s.run(None, {"x": x})
            us = (time.perf_counter() - t) / a.runs / 20 * 1e6
            print(f"  zero points {zero_points:5s} accuracy level {level}: {us:.1f}")


if __name__ == "__main__":
    main()
