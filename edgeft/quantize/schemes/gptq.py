"""int4 GPTQ for ONNX MatMul weights, packed into ORT's MatMulNBits.

GPTQ (Frantar et al., 2022) quantizes a weight column by column and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error: H = 2 XᵀX / n over calibration activations X. It minimizes ‖XW − XŴ‖² per
layer far better than round-to-nearest at the same size.

Why not ORT's ``GPTQWeightOnlyQuantConfig`` (onnxruntime 1.32): its ``gptq()`` reads the error
compensation from columns of an upper-triangular factor where it needs rows, so every update is
zero and the result equals asymmetric RTN (measured: 0.00004% of weights differ), and its packer
re-derives min/max scales from the updated weights instead of keeping GPTQ's grid. Patching both
would mean replacing most of that function, so the algorithm is written here (numpy, ~40 lines),
while the codes are packed with ORT's own nibble packer and the grid is ORT's RTN grid
(:func:`~edgeft.quantize.schemes.matmulnbits.grid`, bit-identical to its C++ quantizer).

Activations: every target MatMul's input is added as a graph output and the fp32 model runs once
over the calibration windows (each a prefill with an empty KV cache, as in ``int8-static``);
XᵀX is accumulated per distinct input (q/k/v share one, gate/up another). All layers see fp32
activations (not the outputs of already-quantized layers, as the sequential original does): one
pass over the model instead of one per layer.

Group scales come from the *updated* weights when the sweep reaches each group (the original
algorithm). With ``act_order`` columns are visited by decreasing Hessian diagonal; MatMulNBits
blocks are contiguous along K, so the groups' scales are then fixed up front from the original
weights ("static groups").

The LM head and the embedding follow the ``lm_head`` / ``embeddings`` options with RTN: when
they are tied, one matrix serves both the logits and the token lookup, and GPTQ would optimize
it for the head only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import ConfigError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)


class GptqOptions(Options):
    """Options of int4-gptq."""

    owner: ClassVar[str] = "quantize scheme int4-gptq"
    block_size: mnb.BlockSize = Field(32, description="weights per quantization block / GPTQ group (16, 32, 64, 128, "
                                                      "256)")
    symmetric: bool = Field(True, description="symmetric blocks (no zero point)")
    act_order: bool = Field(False, description="visit columns by decreasing Hessian diagonal (static group scales)")
    damp: float = Field(0.01, ge=0, lt=1, description="dampening added to the Hessian diagonal, as a fraction of "
                                                      "its mean")
    lazy_block: int = Field(128, ge=1, description="columns per lazy batch update (a multiple of block_size)")
    calibration_windows: int = Field(0, ge=0, description="use at most this many calibration windows (0: all)")
    accuracy_level: mnb.AccuracyLevel = Field(4, description=mnb.ACCURACY_LEVEL_HELP)
    nodes_to_exclude: list[str] = Field(default_factory=list, description="MatMul node names kept in fp32")
    lm_head: mnb.HeadChoice = Field("keep", description="LM head MatMul: keep (fp32), int8 or int4 (RTN)")
    embeddings: mnb.HeadChoice = Field("keep", description="token embedding Gather: keep, int8 or int4 (RTN; shared "
                                                           "with a tied head of the same bits)")


# --------------------------------------------------------------------------- activations


def capture_hessians(model, tensor_names: Sequence[str], windows: Sequence[Sequence[int]],
                     threads: int = 2, config_dir: Path | None = None) -> dict[str, tuple[np.ndarray, int]]:
    """{tensor: (Σ xxᵀ over all calibration tokens [K, K] float64, token count)} for the named activations.

    ``config_dir``: the model's folder, whose config files give the KV head size when the graph
    leaves it symbolic (onnxruntime-genai graphs).
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeft.quantize.schemes.static_int8 import WindowReader
    from edgeft.runtime.lm import session_options

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    names = list(dict.fromkeys(tensor_names))
    for t in names:
        if t not in existing:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeft-capture-") as tmp:
        path = Path(tmp) / "capture.onnx"
        mnb.save_model(m, path)
        del m
        sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        reader = WindowReader(path, windows, config_dir)
    acc: dict[str, tuple[np.ndarray, int]] = {}
    for w in reader.windows:
        outs = sess.run(names, reader.feeds(w))
        for t, x in zip(names, outs):
            x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            h, n = acc.get(t, (0.0, 0))
            acc[t] = (h + x.T @ x, n + x.shape[0])
    return acc


# --------------------------------------------------------------------------- the algorithm


def gptq(b: np.ndarray, xtx: np.ndarray, n_tokens: int, wq: mnb.WeightQuant, damp: float = 0.01,
         act_order: bool = False, lazy_block: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ codes for a MatMul weight ``b`` [K, N] given Σxxᵀ over ``n_tokens`` inputs.

    Returns (codes [N, K_pad] uint8, scales [N, kb] f32, zero points [N, kb] uint8), the layout of
    :func:`~edgeft.quantize.schemes.matmulnbits.rtn_codes`.
    """
    k, n = b.shape
    bs = wq.block_size
    kb = -(-k // bs)
    lazy = max(bs, (lazy_block // bs) * bs)
    w = np.ascontiguousarray(b.T, np.float32)  # [N, K]: rows are output channels, as in the paper
    h = 2.0 * xtx / max(n_tokens, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = np.zeros((n, kb), np.float32)
    zps = np.zeros((n, kb), np.float32)
    if act_order:
        padded = np.zeros((n, kb * bs), np.float32)
        padded[:, :k] = w
        s, z = mnb.grid(padded.reshape(n, kb, bs), wq.bits, wq.symmetric)
        scales, zps = s[..., 0], z[..., 0]
        perm = np.argsort(-np.diag(h), kind="stable")
    else:
        perm = np.arange(k)
    w = w[:, perm]
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    # Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): row i of U gives column i's error propagation.
    hinv = np.linalg.inv(np.linalg.cholesky(h))
    hinv = hinv.T @ hinv
    u = np.linalg.cholesky(hinv).T.astype(np.float32)
    codes = np.zeros((n, kb * bs), np.float32)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = perm[col] // bs
            if not act_order and col % bs == 0:
                s, z = mnb.grid(w1[:, i:i + bs], wq.bits, wq.symmetric)  # from the updated weights
                scales[:, g], zps[:, g] = s[:, 0], z[:, 0]
            q = mnb.to_codes(w1[:, i], scales[:, g], zps[:, g], wq.bits)
            codes[:, perm[col]] = q
            e = (w1[:, i] - (q - zps[:, g]) * scales[:, g]) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes.astype(np.uint8), scales, zps.astype(np.uint8)


def output_error(b: np.ndarray, b_hat: np.ndarray, xtx: np.ndarray) -> float:
    """Σ over calibration tokens of ‖x(W − Ŵ)‖², from Σxxᵀ: trace(Dᵀ XᵀX D)."""
    d = (b - b_hat).astype(np.float64)
    return float(np.sum((xtx @ d) * d))


# --------------------------------------------------------------------------- the scheme


def apply(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]], opts: GptqOptions | None = None,
          bits: int = 4, **options) -> dict:
    import onnx
    from onnx import numpy_helper

    o = GptqOptions.of(opts, **options)
    if not calibration:
        raise ConfigError("int4-gptq needs calibration windows (token ids); none were given")
    wins = list(calibration)[: o.calibration_windows] if o.calibration_windows else list(calibration)
    wq = mnb.WeightQuant(bits, o.block_size, o.symmetric)
    model = onnx.load(str(in_onnx))
    head = mnb.find_head_embed(model.graph).head
    mats = {name: v for name, v in mnb.weight_matmuls(model.graph).items()
            if name not in set(o.nodes_to_exclude) and (head is None or name != head.name)}
    t0 = time.perf_counter()
    stats = capture_hessians(model, [node.input[0] for node, _ in mats.values()], wins, config_dir=Path(in_onnx).parent)
    t_capture = time.perf_counter() - t0
    codes, errors = {}, {}
    t0 = time.perf_counter()
    for name, (node, init) in mats.items():
        b = numpy_helper.to_array(init).astype(np.float32)
        xtx, ntok = stats[node.input[0]]
        c, s, z = gptq(b, xtx.copy(), ntok, wq, o.damp, o.act_order, o.lazy_block)
        codes[name] = (c, s, z)
        rtn = mnb.rtn_codes(b, wq)
        e_rtn = output_error(b, mnb.dequantize(*rtn, b.shape[0], o.block_size), xtx)
        e_gptq = output_error(b, mnb.dequantize(c, s, z, b.shape[0], o.block_size), xtx)
        errors[name] = {"rtn": e_rtn, "gptq": e_gptq}
    t_gptq = time.perf_counter() - t0
    mnb.replace_matmuls(model, {name: wq for name in mats}, o.accuracy_level, codes)
    he = mnb.quantize_head_embed(model, o.lm_head, o.embeddings, o.block_size, o.symmetric, o.accuracy_level)
    mnb.save_model(model, out_onnx)
    ratios = [e["gptq"] / e["rtn"] for e in errors.values() if e["rtn"] > 0]
    log.info("int4-gptq: %d MatMuls, output error vs RTN median %.2fx (capture %.1f s, gptq %.1f s)",
             len(mats), float(np.median(ratios)) if ratios else 1.0, t_capture, t_gptq)
    return {"bits": bits, "algo": "gptq", **o.model_dump(exclude={"lm_head", "embeddings"}),
            "calibration_windows": len(wins), "calibration_tokens": int(sum(len(w) for w in wins)),
            "capture_seconds": t_capture, "gptq_seconds": t_gptq,
            "output_error_vs_rtn": {"median": float(np.median(ratios)) if ratios else None,
                                    "max": float(np.max(ratios)) if ratios else None},
            "layer_output_error": errors, **he, **mnb.node_counts(model.graph)}


SCHEMES.register("int4-gptq")(Scheme("int4-gptq", "int4 weight-only MatMulNBits, GPTQ on calibration text", "int4",
                                     None, apply, GptqOptions, needs_calibration=True))
