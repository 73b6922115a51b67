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

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import gptq as gq
from edgeft.quantize.schemes import lora_int4
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)


class BaseGridOptions(mnb.RewriteOptions):
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


# --------------------------------------------------------------------------- GPTQ on a fixed grid


@contextlib.contextmanager
def _torch_one_thread():
    """torch on one thread: GPTQ's factorizations and column sweep are small and sequential, and a BLAS thread
    pool only adds spin-waits to them (several times slower here when the cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield torch
    finally:
        torch.set_num_threads(before)


def inverse_factor(xtx: np.ndarray, n_tokens: int, damp: float) -> np.ndarray:
    """GPTQ's upper Cholesky factor ``U`` of H⁻¹ (H⁻¹ = UᵀU, H = 2 XᵀX / n + damp): row i spreads column i's error.

    Computed once per MatMul input and shared by every MatMul reading it.
    """
    k = xtx.shape[0]
    h = 2.0 * np.asarray(xtx, np.float64) / max(n_tokens, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    with _torch_one_thread() as torch:
        chol = torch.linalg.cholesky(torch.from_numpy(h.astype(np.float32)))
        return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).numpy()


def gptq_on_grid(b: np.ndarray, u: np.ndarray, offset: np.ndarray, step: np.ndarray, block_size: int,
                 lazy_block: int = 128) -> np.ndarray:
    """GPTQ codes (0..15) of ``b`` [K, N] on the fixed grid ``offset + step * q`` per block along K.

    ``u``: :func:`inverse_factor` of the MatMul's input; ``offset`` / ``step`` are [N, kb]. Returns codes
    [N, K] uint8. The sweep is :func:`gptq.gptq`'s (column by column, each column's rounding error spread
    over the columns not yet quantized, lazy batches), with the grid given instead of fitted per group; in
    torch, whose small in-place updates cost a fraction of numpy's temporaries.
    """
    k, n = b.shape
    lazy = max(block_size, (lazy_block // block_size) * block_size)
    with _torch_one_thread() as torch:
        w = torch.from_numpy(np.ascontiguousarray(b.T, np.float32))
        uu = torch.from_numpy(np.ascontiguousarray(u, np.float32))
        off = torch.from_numpy(np.ascontiguousarray(offset, np.float32))
        st = torch.from_numpy(np.ascontiguousarray(step, np.float32))
        safe = torch.where(st > 0, st, torch.ones_like(st))
        codes = torch.zeros((n, k), dtype=torch.float32)
        for i1 in range(0, k, lazy):
            i2 = min(i1 + lazy, k)
            w1 = w[:, i1:i2].clone()
            err1 = torch.zeros_like(w1)
            u1 = uu[i1:i2, i1:i2]
            for i in range(i2 - i1):
                g = (i1 + i) // block_size
                q = torch.clamp(torch.round((w1[:, i] - off[:, g]) / safe[:, g]), 0, 15)
                codes[:, i1 + i] = q
                e = (w1[:, i] - (off[:, g] + st[:, g] * q)) / u1[i, i]
                w1[:, i:].addr_(e, u1[i, i:], alpha=-1)
                err1[:, i] = e
            w[:, i2:].addmm_(err1, uu[i1:i2, i2:], alpha=-1)
        return codes.to(torch.uint8).numpy()


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


@dataclass
class _Grid:
    """One MatMul's grid: step ``d`` and the offset the codes sit on (``offset + d * q``), [N, kb] each, plus
    what its graph form needs (integer zero points, or the offsets' own int4 codes and scales)."""

    d: np.ndarray
    offset: np.ndarray
    base_offset: np.ndarray  # the base's exact offset (GGUF Q4_1's m), for the report
    on_grid: np.ndarray
    zero_points: np.ndarray | None = None
    offset_codes: np.ndarray | None = None
    offset_scales: np.ndarray | None = None


def _grid(base: np.ndarray, o: BaseGridOptions) -> _Grid:
    """The base's grid in the form ``o.offsets`` stores it (the offsets GPTQ sees are the ones the graph has)."""
    bs = o.block_size
    _, d, mn, on_grid = lora_int4.fit_grid(base, bs, o.grid_tolerance)
    g = _Grid(d, mn, mn, on_grid)
    if o.offsets == "zero-point":
        g.zero_points = np.clip(np.round(-mn / np.where(d > 0, d, 1)), 0, 15).astype(np.uint8)
        g.offset = -d * g.zero_points
    elif o.offsets == "int4":
        g.offset_codes, g.offset_scales, back = offset_rows(mn + 8 * d, bs)
        g.offset = back - 8 * d
    return g


def _node(graph, x: str, xa: str, means: str | None, name: str, node, k: int, codes: np.ndarray, g: _Grid,
          o: BaseGridOptions) -> list:
    """The graph form of one MatMul: MatMulNBits over ``xa`` (int4 offsets), with zero points, or plus an
    fp32 offsets MatMul over the block ``means`` (exact)."""
    from onnx import helper, numpy_helper

    bs, n = o.block_size, codes.shape[0]
    init = f"{node.input[1]}_{name.strip('/').replace('/', '_')}"
    wq = mnb.WeightQuant(4, bs, o.offsets != "zero-point")
    if o.offsets == "int4":
        packed, scales, _ = mnb.pack(np.concatenate([codes, g.offset_codes], 1),
                                     np.concatenate([g.d, g.offset_scales], 1), None, wq)
        return [mnb.nbits_node(graph, xa, node.output[0], name + "_Q4", init, (k + k // bs, n), wq, packed, scales,
                               None, o.accuracy_level)]
    if o.offsets == "zero-point":
        packed, scales, zpk = mnb.pack(codes, g.d, g.zero_points, wq)
        return [mnb.nbits_node(graph, x, node.output[0], name + "_Q4", init, (k, n), wq, packed, scales, zpk,
                               o.accuracy_level)]
    main = f"{node.output[0]}_main"
    packed, scales, _ = mnb.pack(codes, g.d, None, wq)
    c = np.ascontiguousarray(((g.offset + 8 * g.d) * bs).T, np.float32)
    graph.initializer.append(numpy_helper.from_array(c, f"{init}_offsets"))
    side = f"{node.output[0]}_offsets"
    return [mnb.nbits_node(graph, x, main, name + "_Q4", init, (k, n), wq, packed, scales, None, o.accuracy_level),
            helper.make_node("MatMul", [means, f"{init}_offsets"], [side], name=name + "_offsets"),
            helper.make_node("Add", [main, side], [node.output[0]], name=name + "_add")]


def _rewrite_group(graph, x: str, members: list, o: BaseGridOptions, hess: tuple[np.ndarray, int],
                   base_of, stats: dict) -> list:
    """Nodes replacing the MatMuls that read ``x``: they share its block means and one GPTQ sweep (their
    weights side by side along N; the inverse Hessian factor is the input's)."""
    from onnx import helper

    bs = o.block_size
    k = members[0][2].shape[0]
    tag = x.strip("/").replace("/", "_").replace(".", "_").replace(":", "_")
    nodes, means, xa = [], None, x
    if o.offsets != "zero-point":
        pool, means = _block_means(x, tag, bs)
        nodes.append(pool)
    if o.offsets == "int4":
        xa = f"{tag}_with_means"
        nodes.append(helper.make_node("Concat", [x, means], [xa], axis=-1, name=xa))
    xtx, ntok = hess
    bases = [base_of(name, w) for name, _, w in members]
    grids = [_grid(base, o) for base, _ in bases]
    w_all = np.concatenate([w for _, _, w in members], 1)
    offset = np.concatenate([g.offset for g in grids])
    d = np.concatenate([g.d for g in grids])
    codes_all = gptq_on_grid(w_all, inverse_factor(xtx, ntok, o.damp), offset, d, bs, o.lazy_block)
    lo = 0
    for (name, node, w), (_, has_lora), g in zip(members, bases, grids):
        n = w.shape[1]
        codes, lo = codes_all[lo:lo + n], lo + n
        rtn = rtn_on_grid(w, g.offset, g.d, bs)
        stats[name] = {"on_grid_fraction": float(g.on_grid.mean()), "lora": has_lora,
                       "output_error": gq.output_error(w, w - grid_error(w, codes, g.offset, g.d, bs), xtx),
                       "output_error_rtn": gq.output_error(w, w - grid_error(w, rtn, g.offset, g.d, bs), xtx),
                       "codes_moved_from_rtn": float(np.mean(codes != rtn)),
                       "offset_error_steps_max": float(np.max(np.abs(g.offset - g.base_offset)
                                                              / np.where(g.d > 0, g.d, 1)))}
        nodes += _node(graph, x, xa, means, name, node, k, codes, g, o)
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
    mats = mnb.body_matmuls(graph, o.nodes_to_exclude)
    groups: dict[str, list] = {}
    for name, (node, init) in mats.items():
        w = numpy_helper.to_array(init).astype(np.float32)
        if w.shape[0] % o.block_size:
            raise UnsupportedError(f"quantize scheme int4-basegrid: {name} has K={w.shape[0]}, not a multiple of "
                                   f"block_size {o.block_size}; choose a block size that divides it")
        groups.setdefault(node.input[0], []).append((name, node, w))
    t0 = time.perf_counter()
    hess = gq.capture(model, list(groups), wins, config_dir=Path(in_onnx).parent).hessians
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
    he = mnb.finish_rewrite(model, new_nodes, o, out_onnx)
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
