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

The MatMuls that read one input share H, so one Cholesky and one column sweep serve all of them
(their rows stacked; GPTQ treats output channels independently), and ``auto`` puts every int4 rung
of the ladder in that same sweep, each row on its own grid (:func:`gptq_many`). The sweep also
gives each weight's output error ‖XW − XŴ‖² without another product with H.

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
from typing import ClassVar, NamedTuple, Sequence

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


class Capture(NamedTuple):
    """What one calibration pass gives (:func:`capture`)."""

    hessians: dict[str, tuple[np.ndarray, int]]  # {activation: (Σ xxᵀ over all tokens [K, K] float64, token count)}
    logits: list[np.ndarray]  # [seq, vocab] of the windows asked for, in that order
    norms: dict[str, np.ndarray]  # {tensor: every token's L2 norm over its last axis, all windows}


def capture(model, tensor_names: Sequence[str], windows: Sequence[Sequence[int]], threads: int = 2,
            config_dir: Path | None = None, logits_of: Sequence[int] = (), in_place: bool = False,
            norms_of: Sequence[str] = ()) -> Capture:
    """One fp32 pass over ``windows``: Σ xxᵀ of the named activations, the logits of the windows whose
    indices are in ``logits_of`` and the per-token norms of the tensors in ``norms_of``.

    xᵀx is computed in float32 over about a thousand tokens at a time, and those products summed in
    float64.
    ``config_dir``: the model's folder, whose config files give the KV head size when the graph
    leaves it symbolic (onnxruntime-genai graphs). ``in_place``: add the outputs to ``model`` itself
    (the caller has no further use for it) instead of a copy.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeft.quantize.schemes.static_int8 import WindowReader
    from edgeft.runtime.lm import session_options

    m = model
    if not in_place:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    names = list(dict.fromkeys(tensor_names))
    normed = [t for t in dict.fromkeys(norms_of) if t not in names]
    for t in names + normed:
        if t not in existing:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    fetch = names + normed + (["logits"] if logits_of else [])
    reader = WindowReader(Path(config_dir or ".") / "model.onnx", windows, config_dir, model=m)
    so = session_options(threads)
    if m.ByteSize() < 1.8 * 2**30:  # protobuf's limit: bigger models go through a file with external data
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgeft-capture-") as tmp:
            mnb.save_model(m, Path(tmp) / "capture.onnx")
            sess = ort.InferenceSession(str(Path(tmp) / "capture.onnx"), so, providers=["CPUExecutionProvider"])
    del m
    rows: dict[str, list[np.ndarray]] = {t: [] for t in names}  # activations not yet in the sum
    acc: dict[str, tuple[np.ndarray | float, int]] = {t: (0.0, 0) for t in names}
    logits: dict[int, np.ndarray] = {}
    norms: dict[str, list[np.ndarray]] = {t: [] for t in dict.fromkeys(norms_of)}

    def fold(t: str) -> None:  # xᵀx over ~1k tokens at once (a bigger product runs several times faster)
        x = np.concatenate(rows[t]) if len(rows[t]) > 1 else rows[t][0]
        h, n = acc[t]
        acc[t] = (h + (x.T @ x).astype(np.float64), n + x.shape[0])
        rows[t].clear()

    for i, w in enumerate(reader.windows):
        got = dict(zip(fetch, sess.run(fetch, reader.feeds(w))))
        for t in norms:
            norms[t].append(np.linalg.norm(got[t].reshape(-1, got[t].shape[-1]).astype(np.float64), axis=1))
        for t in names:
            rows[t].append(np.asarray(got[t], np.float32).reshape(-1, got[t].shape[-1]))
            if sum(len(r) for r in rows[t]) >= 1024:
                fold(t)
        if i in logits_of:
            logits[i] = np.asarray(got["logits"][0], np.float32)
    for t in names:
        if rows[t]:
            fold(t)
    return Capture(acc, [logits[i] for i in logits_of],
                   {t: np.concatenate(v) if v else np.zeros(0) for t, v in norms.items()})


# --------------------------------------------------------------------------- the algorithm


def _inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU; row i gives column i's error propagation), float32.

    With J the order-reversing permutation and JHJ = LLᵀ: H⁻¹ = J L⁻ᵀ L⁻¹ J, and U = J L⁻¹ J is upper
    triangular, so one Cholesky and one triangular solve give it (no inverse of H, no second Cholesky).
    """
    import torch

    ht = torch.from_numpy(np.ascontiguousarray(h[::-1, ::-1], np.float32))
    low = torch.linalg.cholesky(ht)
    inv = torch.linalg.solve_triangular(low, torch.eye(h.shape[0]), upper=False)
    return np.ascontiguousarray(inv.numpy()[::-1, ::-1])


class _Rows:
    """The rows (output channels) of several weights stacked for one GPTQ sweep, each weight on its own grid.

    ``scale``/``zp`` hold every row's current group grid; ``update(col, w1, i)`` sets them for column
    ``col`` (static groups: precomputed per column; otherwise a group's grid is taken from the updated
    weights ``w1[i:i + block]`` when the sweep reaches its first column, as in the paper).
    """

    def __init__(self, weights: Sequence[np.ndarray], quants: Sequence[mnb.WeightQuant], k: int) -> None:
        self.spans, start = [], 0
        for b in weights:
            self.spans.append((start, start + b.shape[1]))
            start += b.shape[1]
        self.quants, self.k, self.n = list(quants), k, start
        self.qmax = np.concatenate([np.full(b - a, 2 ** wq.bits - 1, np.float32)
                                    for (a, b), wq in zip(self.spans, quants)])
        self.scales = [np.zeros((b - a, -(-k // wq.block_size)), np.float32) for (a, b), wq in zip(self.spans, quants)]
        self.zps = [np.zeros_like(s) for s in self.scales]
        self.scale, self.zp = np.zeros(self.n, np.float32), np.zeros(self.n, np.float32)
        self.static: tuple[np.ndarray, np.ndarray] | None = None
        self.zero_scale = True  # some row's current scale may be 0 (an all-zero group): its codes are the zero point

    def fix_groups(self, w: np.ndarray, perm: np.ndarray) -> None:
        """Static groups (``act_order``): every group's grid from the original weights ``w`` [R, K], and
        per visited column (in ``perm`` order) the grid of the group that column belongs to."""
        s_t, z_t = np.empty((self.k, self.n), np.float32), np.empty((self.k, self.n), np.float32)
        for j, ((a, b), wq) in enumerate(zip(self.spans, self.quants)):
            kb = self.scales[j].shape[1]
            padded = np.zeros((b - a, kb * wq.block_size), np.float32)
            padded[:, :self.k] = w[a:b]
            s, z = mnb.grid(padded.reshape(b - a, kb, wq.block_size), wq.bits, wq.symmetric)
            self.scales[j], self.zps[j] = s[..., 0], z[..., 0]
            group = perm // wq.block_size
            s_t[:, a:b], z_t[:, a:b] = self.scales[j][:, group].T, self.zps[j][:, group].T
        self.static = (s_t, z_t)
        self.zero_scale = bool((s_t == 0).any())

    def update(self, col: int, w1: np.ndarray, i: int) -> None:
        if self.static is not None:
            self.scale, self.zp = self.static[0][col], self.static[1][col]
            return
        for j, ((a, b), wq) in enumerate(zip(self.spans, self.quants)):
            if col % wq.block_size == 0:
                s, z = mnb.grid(w1[i:i + wq.block_size, a:b].T, wq.bits, wq.symmetric)
                self.scales[j][:, col // wq.block_size], self.zps[j][:, col // wq.block_size] = s[:, 0], z[:, 0]
                self.scale[a:b], self.zp[a:b] = s[:, 0], z[:, 0]
                self.zero_scale = bool((self.scale == 0).any())


def _sweep(wt: np.ndarray, u: np.ndarray, rows: _Rows, perm: np.ndarray, lazy: int) -> tuple[np.ndarray, np.ndarray]:
    """The GPTQ column sweep over ``wt`` [K, R] (columns of W as rows, visited in order; updated in
    place) with lazy batch updates. Returns (codes [K, R] in the original column order, Σ per row of
    the squared scaled errors)."""
    k = wt.shape[0]
    codes_t = np.zeros((k, rows.n), np.float32)
    err_sq = np.zeros(rows.n, np.float64)
    tmp = np.empty((lazy, rows.n), np.float32)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = wt[i1:i2]
        err1 = np.empty((i2 - i1, rows.n), np.float32)
        for i in range(i2 - i1):
            col = i1 + i
            rows.update(col, w1, i)
            x, s, z = w1[i], rows.scale, rows.zp
            with np.errstate(divide="ignore", invalid="ignore"):  # mnb.to_codes, per row, in place
                q = np.divide(x, s)
            np.round(q, out=q)
            q += z
            if rows.zero_scale:
                np.copyto(q, z, where=s == 0)
            np.clip(q, 0, rows.qmax, out=q)
            codes_t[perm[col]] = q
            e = q - z  # e = (x - (q - z) s) / u_ii
            e *= s
            np.subtract(x, e, out=e)
            e /= u[col, col]
            m = i2 - col - 1
            if m:  # spread the error over the block's remaining columns
                np.multiply(u[col, col + 1:i2, None], e[None, :], out=tmp[:m])
                np.subtract(w1[i + 1:], tmp[:m], out=w1[i + 1:])
            err1[i] = e
        err_sq += np.einsum("ij,ij->j", err1, err1, dtype=np.float64)
        if i2 < k:  # and the block's errors over every later column at once
            wt[i2:] -= u[i1:i2, i2:].T @ err1
    return codes_t, err_sq


def gptq_many(weights: Sequence[np.ndarray], xtx: np.ndarray, n_tokens: int, quants: Sequence[mnb.WeightQuant],
              damp: float = 0.01, act_order: bool = False, lazy_block: int = 128) -> list[tuple]:
    """GPTQ for several weights [K, Nᵢ] that read the same input (so share Σxxᵀ), each on its own grid
    ``quants[i]`` (one weight may appear once per grid): one Cholesky and one column sweep over all
    their rows (GPTQ treats output channels independently; only the grid differs per row).

    Returns per weight (codes [N, K_pad] uint8, scales [N, kb] f32, zero points [N, kb] uint8, error),
    error = ‖X(W − Ŵ)‖² over the calibration tokens, read off the sweep: with H⁻¹ = UᵀU the final
    ΔW equals E·U (E the scaled column errors), so ΔW (H + λI) ΔWᵀ = EEᵀ; minus λ‖ΔW‖² it is the
    undamped error, times n/2 (H = 2XᵀX/n).
    """
    k = weights[0].shape[0]
    rows = _Rows(weights, quants, k)
    w = np.ascontiguousarray(np.concatenate([b.T for b in weights]), np.float32)  # [R, K]
    h = 2.0 * xtx / max(n_tokens, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    if act_order:
        rows.fix_groups(w, perm)
    h = h[np.ix_(perm, perm)]
    lam = damp * float(np.mean(np.diag(h)))
    h[np.diag_indices(k)] += lam
    blocks = max(wq.block_size for wq in quants)
    codes_t, err_sq = _sweep(np.ascontiguousarray(w[:, perm].T), _inverse_factor(h), rows, perm,
                             max(blocks, (lazy_block // blocks) * blocks))
    out = []
    for j, ((a, b), wq) in enumerate(zip(rows.spans, quants)):
        codes = np.zeros((b - a, rows.scales[j].shape[1] * wq.block_size), np.uint8)
        codes[:, :k] = codes_t[:, a:b].T
        zp = rows.zps[j].astype(np.uint8)
        d = w[a:b] - mnb.dequantize(codes, rows.scales[j], zp, k, wq.block_size).T
        sq = float(err_sq[a:b].sum()) - lam * float(np.einsum("ij,ij->", d, d, dtype=np.float64))
        out.append((codes, rows.scales[j], zp, max(0.0, sq) * max(n_tokens, 1) / 2.0))
    return out


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
    mats = mnb.body_matmuls(model.graph, o.nodes_to_exclude)
    t0 = time.perf_counter()
    stats = capture(model, [node.input[0] for node, _ in mats.values()], wins, config_dir=Path(in_onnx).parent).hessians
    t_capture = time.perf_counter() - t0
    codes, errors = {}, {}
    t0 = time.perf_counter()
    readers: dict[str, list[str]] = {}  # MatMuls by the input they read (q/k/v, gate/up): one sweep each
    for name, (node, _) in mats.items():
        readers.setdefault(node.input[0], []).append(name)
    for x, names in readers.items():
        xtx, ntok = stats[x]
        weights = [numpy_helper.to_array(mats[n][1]).astype(np.float32) for n in names]
        for name, b, (c, s, z, e_gptq) in zip(names, weights, gptq_many(weights, xtx.copy(), ntok, [wq] * len(names),
                                                                        o.damp, o.act_order, o.lazy_block)):
            codes[name] = (c, s, z)
            e_rtn = output_error(b, mnb.dequantize(*mnb.rtn_codes(b, wq), b.shape[0], o.block_size), xtx)
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
