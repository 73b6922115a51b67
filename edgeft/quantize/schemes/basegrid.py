"""``int4-basegrid``: int4 codes on the *base model's* 4-bit grid, chosen by GPTQ on the task's calibration text.

Why: the embedded SmolLM2 ships as a Q4_1 GGUF, so every Linear weight of the base is already an
asymmetric 4-bit code in blocks of 32 along the input, with a float step ``d`` and a float offset
``m`` per block; a LoRA fine-tune moves the weights by a few hundredths of a step
(``benchmarks/lora_vs_grid.py``). A 4-bit grid fitted to the *merged* weights either cannot
represent the base (integer zero points: ``int4-rtn``/``int4-gptq`` pay +10-30% perplexity on
general text for the offsets they miss) or rounds the fine-tune away (``int4-hqq`` lands back on the
base: "fine-tune erased"). This scheme keeps the base's own grid, so the base is represented exactly,
and lets GPTQ choose the codes of the *merged* weights on it: the rounding error is spread, by the
inverse Hessian of each layer's output on the calibration text (the training split), over the codes
not yet chosen, so the fine-tune survives where the task's activations need it. Measured on the
quickstart (docs/quantization.md): rounding the merged weights onto this grid gives exact match 0.0;
GPTQ on the same grid keeps the fine-tuned exact match, and general-text perplexity lands between
the merged model's and the base's (the fine-tune is kept where the task uses it).

The grid comes from the base weights: with the fine-tune's LoRA adapter (``adapter``), the export's
weight minus ``scaling * B @ A``; without one (full fine-tunes, or a model not loaded from a 4-bit
file), each block's min/max over 15 steps of the weights themselves (GGUF Q4_1's fit).

A block is ``d * q + m`` (q = 0..15). ORT's fast MatMulNBits kernel takes ``d * (q - 8)`` (no zero
point), so the block offsets ``C = m + 8 d`` need their own term, ``offsets`` picks how:

- ``int4`` (default): a block-mean ``AveragePool`` of the MatMul's input is appended to it
  (``Concat``) and the offsets become extra int4 rows of the same MatMulNBits (K grows by K /
  ``block_size``; the offsets fill blocks of their own, with their own scales). GPTQ sees the int4-rounded offsets as part
  of the grid and compensates them like any rounding. Two small ops per MatMul input.
- ``zero-point``: the nearest integer zero point per block (MatMulNBits' uint4 zero points): no
  extra ops, the grid shifted by up to half a step (GPTQ compensates), a slower kernel on CPUs.
- ``exact``: the offsets in fp32, a separate ``MatMul`` over the block means plus an ``Add`` (a
  reference point: larger and slower).

The LM head and the token embedding follow ``lm_head`` / ``embeddings`` (int8 by default: SmolLM2's
tied embedding is a Q8_0 matrix, which int8 keeps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import gptq as gq
from edgeft.quantize.schemes import lora_int4
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)


class BaseGridOptions(Options):
    """Options of int4-basegrid."""

    owner: ClassVar[str] = "quantize scheme int4-basegrid"
    block_size: mnb.BlockSize = Field(32, description="weights per 4-bit block along K: the base's block (GGUF Q4_1 "
                                                      "uses 32)")
    offsets: Literal["int4", "zero-point", "exact"] = Field(
        "int4", description="block offsets: int4 rows of the same MatMulNBits over the input's block means "
                            "(default), integer zero points (no extra ops, grid shifted), or exact fp32 (a reference)")
    damp: float = Field(0.01, ge=0, lt=1, description="GPTQ dampening (fraction of the mean Hessian diagonal)")
    lazy_block: int = Field(128, ge=1, description="GPTQ columns per lazy batch update")
    calibration_windows: int = Field(0, ge=0, description="use at most this many calibration windows (0: all)")
    grid_tolerance: float = Field(1e-3, gt=0, description="a base block counts as on a 4-bit grid when every weight "
                                                          "is within this many steps of it (on_grid_fraction)")
    accuracy_level: mnb.AccuracyLevel = Field(4, description=mnb.ACCURACY_LEVEL_HELP)
    nodes_to_exclude: list[str] = Field(default_factory=list, description="MatMul node names kept in fp32")
    head_block_size: mnb.BlockSize = Field(64, description="block of the LM head / embedding when int8")
    lm_head: mnb.HeadChoice = Field("int8", description="LM head MatMul: keep, int8 or int4 (RTN)")
    embeddings: mnb.HeadChoice = Field("int8", description="token embedding Gather: keep, int8 or int4 (shares the "
                                                           "head's packed weight when tied and at the same bits)")


# --------------------------------------------------------------------------- GPTQ on a fixed grid


def gptq_on_grid(b: np.ndarray, xtx: np.ndarray, n_tokens: int, offset: np.ndarray, step: np.ndarray,
                 block_size: int, damp: float = 0.01, lazy_block: int = 128) -> np.ndarray:
    """GPTQ codes (0..15) of ``b`` [K, N] on the fixed grid ``offset + step * q`` per block along K.

    ``offset`` / ``step`` are [N, kb]. Returns codes [N, K] uint8. The sweep is :func:`gptq.gptq`'s
    (upper Cholesky factor of H⁻¹, lazy batches), with the grid given instead of fitted per group.
    """
    k, n = b.shape
    w = np.ascontiguousarray(b.T, np.float32)
    h = 2.0 * xtx / max(n_tokens, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    hinv = np.linalg.inv(np.linalg.cholesky(h))
    u = np.linalg.cholesky(hinv.T @ hinv).T.astype(np.float32)
    safe = np.where(step > 0, step, 1).astype(np.float32)
    codes = np.zeros((n, k), np.float32)
    lazy = max(block_size, (lazy_block // block_size) * block_size)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = (i1 + i) // block_size
            q = np.clip(np.round((w1[:, i] - offset[:, g]) / safe[:, g]), 0, 15)
            codes[:, i1 + i] = q
            e = (w1[:, i] - (offset[:, g] + step[:, g] * q)) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes.astype(np.uint8)


def grid_error(b: np.ndarray, codes: np.ndarray, offset: np.ndarray, step: np.ndarray, block_size: int) -> np.ndarray:
    """``b`` minus what the codes on the grid give, [K, N]."""
    n, k = codes.shape
    kb = k // block_size
    deq = offset[..., None] + step[..., None] * codes.reshape(n, kb, block_size).astype(np.float32)
    return b - deq.reshape(n, k).T


def rtn_on_grid(b: np.ndarray, offset: np.ndarray, step: np.ndarray, block_size: int) -> np.ndarray:
    """Round-to-nearest codes of ``b`` [K, N] on the grid (what rounding the merged weights onto it gives)."""
    k, n = b.shape
    kb = k // block_size
    blocks = np.ascontiguousarray(b.T, np.float32).reshape(n, kb, block_size)
    safe = np.where(step > 0, step, 1)[..., None]
    return np.clip(np.round((blocks - offset[..., None]) / safe), 0, 15).reshape(n, k).astype(np.uint8)


# --------------------------------------------------------------------------- the offsets


def offset_rows(c: np.ndarray, block_size: int):
    """The offsets ``C`` [N, kb] as int4 rows read against block *means*: (codes [N, kbp], scales [N, kbp/bs],
    C as the rows give it back [N, kb]). Symmetric int4 on ORT's grid, blocks of ``block_size`` offsets."""
    n, kb = c.shape
    kbp = -(-kb // block_size) * block_size
    rows = np.zeros((kbp, n), np.float32)
    rows[:kb] = (c * block_size).T  # a mean times the block size is the block's sum
    wq = mnb.WeightQuant(4, block_size, True)
    codes, scales, zp = mnb.rtn_codes(rows, wq)
    back = mnb.dequantize(codes, scales, zp, kbp, block_size)[:kb].T / block_size
    return codes, scales, back


def _block_means(x: str, tag: str, block_size: int):
    """``AveragePool`` of ``x`` [B, S, K] over blocks of ``block_size`` along K: [B, S, K / block_size]."""
    from onnx import helper

    out = f"{tag}_block_means"
    return helper.make_node("AveragePool", [x], [out], name=out, kernel_shape=[block_size], strides=[block_size]), out


# --------------------------------------------------------------------------- the graph rewrite


def _rewrite_group(graph, x: str, members: list, o: BaseGridOptions, hess: tuple[np.ndarray, int],
                   base_of, stats: dict) -> list:
    """Nodes replacing the MatMuls that read ``x`` (they share its block means)."""
    from onnx import helper, numpy_helper

    bs = o.block_size
    k = members[0][2].shape[0]
    kb = k // bs
    tag = x.strip("/").replace("/", "_").replace(".", "_").replace(":", "_")
    nodes, means = [], None
    if o.offsets != "zero-point":
        pool, means = _block_means(x, tag, bs)
        nodes.append(pool)
    xa = x
    if o.offsets == "int4":
        xa = f"{tag}_with_means"
        nodes.append(helper.make_node("Concat", [x, means], [xa], axis=-1, name=xa))
    xtx, ntok = hess
    for name, node, w in members:
        n = w.shape[1]
        base, has_lora = base_of(name, w)
        _, d, mn, on_grid = lora_int4.fit_grid(base, bs, o.grid_tolerance)
        init = f"{node.input[1]}_{name.strip('/').replace('/', '_')}"
        wq = mnb.WeightQuant(4, bs, o.offsets != "zero-point")
        if o.offsets == "zero-point":
            z = np.clip(np.round(-mn / np.where(d > 0, d, 1)), 0, 15).astype(np.uint8)
            offset = -d * z
        elif o.offsets == "int4":
            c_codes, c_scales, c_back = offset_rows(mn + 8 * d, bs)
            offset = c_back - 8 * d
        else:
            offset = mn
        codes = gptq_on_grid(w, xtx.copy(), ntok, offset, d, bs, o.damp, o.lazy_block)
        rtn = rtn_on_grid(w, offset, d, bs)
        err = grid_error(w, codes, offset, d, bs)
        stats[name] = {"on_grid_fraction": float(on_grid.mean()), "lora": has_lora,
                       "output_error": gq.output_error(w, w - err, xtx),
                       "output_error_rtn": gq.output_error(w, w - grid_error(w, rtn, offset, d, bs), xtx),
                       "codes_moved_from_rtn": float(np.mean(codes != rtn))}
        if o.offsets == "int4":
            full = np.concatenate([codes, c_codes], 1)
            packed, scales, _ = mnb.pack(full, np.concatenate([d, c_scales], 1), None, wq)
            nodes.append(mnb.nbits_node(graph, xa, node.output[0], name + "_Q4", init, (k + kb, n), wq, packed,
                                        scales, None, o.accuracy_level))
        elif o.offsets == "zero-point":
            packed, scales, zpk = mnb.pack(codes, d, z, wq)
            nodes.append(mnb.nbits_node(graph, x, node.output[0], name + "_Q4", init, (k, n), wq, packed, scales,
                                        zpk, o.accuracy_level))
        else:
            main = f"{node.output[0]}_main"
            packed, scales, _ = mnb.pack(codes, d, None, wq)
            nodes.append(mnb.nbits_node(graph, x, main, name + "_Q4", init, (k, n), wq, packed, scales, None,
                                        o.accuracy_level))
            c = np.ascontiguousarray(((mn + 8 * d) * bs).T, np.float32)
            graph.initializer.append(numpy_helper.from_array(c, f"{init}_offsets"))
            side = f"{node.output[0]}_offsets"
            nodes += [helper.make_node("MatMul", [means, f"{init}_offsets"], [side], name=name + "_offsets"),
                      helper.make_node("Add", [main, side], [node.output[0]], name=name + "_add")]
    return nodes


def _base_fn(lora, scaling: float):
    """``base_of(matmul name, merged weight) -> (base weight, adapter found)``."""
    def base_of(name: str, w: np.ndarray):
        parts = lora_int4.adapter_parts(lora, name, w.shape) if lora is not None else None
        if not parts:
            return w, False
        delta = np.zeros_like(w)
        for lo, hi, a, b in parts:
            delta[:, lo:hi] = scaling * (b @ a).T
        return w - delta, True
    return base_of


def apply(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]], opts: BaseGridOptions | None = None,
          adapter: Path | None = None, **options) -> dict:
    import onnx
    from onnx import numpy_helper

    o = BaseGridOptions.of(opts, **options)
    if not calibration:
        raise ConfigError("int4-basegrid needs calibration windows (token ids of the training split); none were given")
    wins = list(calibration)[: o.calibration_windows] if o.calibration_windows else list(calibration)
    lora = lora_int4.load_lora(adapter) if adapter is not None else None
    model = onnx.load(str(in_onnx))
    graph = model.graph
    head = mnb.find_head_embed(graph).head
    mats = {name: v for name, v in mnb.weight_matmuls(graph).items()
            if name not in set(o.nodes_to_exclude) and (head is None or name != head.name)}
    groups: dict[str, list] = {}
    for name, (node, init) in mats.items():
        w = numpy_helper.to_array(init).astype(np.float32)
        if w.shape[0] % o.block_size:
            raise UnsupportedError(f"quantize scheme int4-basegrid: {name} has K={w.shape[0]}, not a multiple of "
                                   f"block_size {o.block_size}; choose a block size that divides it")
        groups.setdefault(node.input[0], []).append((name, node, w))
    t0 = time.perf_counter()
    hess = gq.capture_hessians(model, list(groups), wins, config_dir=Path(in_onnx).parent)
    t_capture = time.perf_counter() - t0
    base_of = _base_fn(lora, lora.scaling if lora is not None else 0.0)
    replaced = {id(node): x for x, ms in groups.items() for _, node, _ in ms}
    stats: dict[str, dict] = {}
    new_nodes, emitted = [], set()
    t0 = time.perf_counter()
    for node in graph.node:
        x = replaced.get(id(node))
        if x is None:
            new_nodes.append(node)
        elif x not in emitted:  # the group goes where its first MatMul was (its input exists by then)
            new_nodes.extend(_rewrite_group(graph, x, groups[x], o, hess[x], base_of, stats))
            emitted.add(x)
    t_gptq = time.perf_counter() - t0
    if lora is not None and not any(s["lora"] for s in stats.values()):
        raise UnsupportedError(f"quantize scheme int4-basegrid: no MatMul of {in_onnx} matches a module of the "
                               f"adapter {adapter}; was it trained on this model?")
    del graph.node[:]
    graph.node.extend(new_nodes)
    mnb._ensure_ms_opset(model)
    mnb.drop_unused_initializers(graph)
    he = mnb.quantize_head_embed(model, o.lm_head, o.embeddings,
                                 o.head_block_size if "int8" in (o.lm_head, o.embeddings) else o.block_size, True,
                                 o.accuracy_level)
    mnb.save_model(model, out_onnx)
    ratios = [s["output_error"] / s["output_error_rtn"] for s in stats.values() if s["output_error_rtn"] > 0]
    on_grid = float(np.mean([s["on_grid_fraction"] for s in stats.values()]))
    log.info("int4-basegrid: %d MatMuls, base on a 4-bit grid for %.1f%% of blocks, output error vs rounding onto "
             "the grid median %.2fx (capture %.1f s, gptq %.1f s)", len(stats), 100 * on_grid,
             float(np.median(ratios)) if ratios else 1.0, t_capture, t_gptq)
    return {"bits": 4, "algo": "gptq-on-base-grid", **o.model_dump(exclude={"lm_head", "embeddings"}),
            "adapter": str(adapter) if adapter is not None else None, "on_grid_fraction": on_grid,
            "calibration_windows": len(wins), "calibration_tokens": int(sum(len(w) for w in wins)),
            "capture_seconds": t_capture, "gptq_seconds": t_gptq,
            "output_error_vs_rounding": {"median": float(np.median(ratios)) if ratios else None,
                                         "max": float(np.max(ratios)) if ratios else None},
            "layers": stats, **he, **mnb.node_counts(model.graph)}


SCHEMES.register("int4-basegrid")(Scheme(
    "int4-basegrid", "int4 MatMulNBits on the base model's own 4-bit grid, GPTQ codes on calibration text", "int4",
    None, apply, BaseGridOptions, needs_calibration=True, uses_adapter=True))
