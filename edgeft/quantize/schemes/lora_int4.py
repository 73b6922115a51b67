"""``int4-lora``: the base on its own 4-bit grid and the LoRA adapter kept unmerged, in one ONNX graph.

Why: a LoRA fine-tune moves weights by a small fraction of a 4-bit step (the quickstart: a median
0.03 of a step, ``benchmarks/lora_vs_grid.py``). Any 4-bit grid fitted to the *merged* weights then
either rounds the fine-tune away (a grid that fits the base: ``int4-hqq``, flagged "fine-tune erased")
or pays for the base offsets it cannot represent (integer zero points: ``int4-rtn``/``int4-gptq``,
+10-30% perplexity on general text). This scheme quantizes the *base* — the export's weight minus
``scaling * B @ A``, rebuilt from the adapter — and runs the adapter beside it, as llama.cpp does
with a LoRA applied at run time to a quantized base. Each quantized MatMul ``y = x @ W`` becomes::

    y = MatMulNBits(x; q, d)                  # d * (q - 8): ORT's fast symmetric int4 kernel
      + [x @ A', blocksum(x)] @ [s * B'; C]   # the adapter and the block offsets, int8 (one MatMulNBits)

where a block of ``block_size`` weights along K is ``d * q + m`` (GGUF Q4_1's form: a float step
and a float offset per block), ``C = m + 8 d`` and ``blocksum`` adds the activations of each block.
When the base already lies on such a grid — a model loaded from a Q4_1 GGUF, like the embedded
SmolLM2 — the codes are recovered exactly (``on_grid_fraction`` in the report), so the artifact is
the fine-tuned model itself up to the int8 rounding of the side path; otherwise each block gets
min/max round-to-nearest. MatMulNBits with float zero points expresses ``d * q + m`` directly but
runs about 44x slower on CPUs (``benchmarks/matmulnbits_zero_points.py``); the block-sum form keeps
the fast kernel. The block sums are computed once per input tensor (q/k/v and gate/up share them).

Only plain LoRA adapters (PEFT ``LORA``, no DoRA, no ``modules_to_save``, no embedding LoRA) on the
optimum ``onnx-kv`` export are supported; anything else is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)

SIDE_BLOCK = 16  # int8 block of the side path along its K (adapter rank, then block sums), MatMulNBits' smallest


class LoraInt4Options(Options):
    """Options of int4-lora."""

    owner: ClassVar[str] = "quantize scheme int4-lora"
    block_size: mnb.BlockSize = Field(32, description="weights per int4 block along K (GGUF Q4_1 uses 32)")
    accuracy_level: mnb.AccuracyLevel = Field(4, description=mnb.ACCURACY_LEVEL_HELP)
    side_path: Literal["int8", "fp32"] = Field(
        "int8", description="storage of the adapter and block offsets: int8 (MatMulNBits bits=8) or fp32 (MatMul)")
    grid_tolerance: float = Field(
        1e-3, gt=0, description="a base block counts as on a 4-bit grid when every weight is within this many "
                                "steps of it (the report's on_grid_fraction)")
    adapter_block_size: mnb.BlockSize = Field(64, description="int8 block along K of the adapter's A projection")
    head_block_size: mnb.BlockSize = Field(
        64, description="block of the LM head / embedding when int8 (int8 is near-lossless in larger blocks, "
                         "and the head is a quarter of the artifact)")
    lm_head: mnb.HeadChoice = Field("int8", description="LM head MatMul (the adapter does not touch it): keep, int8 "
                                                        "or int4")
    embeddings: mnb.HeadChoice = Field("int8", description="token embedding Gather: keep, int8 or int4 (shares the "
                                                           "head's packed weight when tied and at the same bits)")


# --------------------------------------------------------------------------- the adapter


@dataclass
class Lora:
    """A plain LoRA adapter: per module ``(A [r, in], B [out, r])`` and ``delta = scaling * B @ A``."""

    scaling: float
    modules: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    path: Path | None = None


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def load_lora(adapter_dir: Path) -> Lora:
    """Read a PEFT LoRA adapter folder; refuse what is not a plain low-rank delta, saying why."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise UnsupportedError(f"quantize scheme int4-lora: {adapter_dir} has no adapter_config.json; it needs the "
                               "LoRA adapter of the fine-tune (finetune/adapter), so the method must be lora or qlora")
    cfg = json.loads(cfg_path.read_text())
    where = f"quantize scheme int4-lora: {cfg_path}"
    if cfg.get("peft_type") != "LORA":
        raise UnsupportedError(f"{where}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters are a low-rank "
                               "delta the side path can run (use int4-gptq or auto for other methods)")
    if cfg.get("use_dora"):
        raise UnsupportedError(f"{where}: DoRA rescales the merged weight's columns, which is not an additive "
                               "side path; use int4-gptq or auto")
    if cfg.get("modules_to_save"):
        raise UnsupportedError(f"{where}: modules_to_save {cfg['modules_to_save']} are fully trained copies, not "
                               "low-rank; use int4-gptq or auto")
    if cfg.get("alpha_pattern") or cfg.get("rank_pattern"):
        raise UnsupportedError(f"{where}: per-module rank_pattern/alpha_pattern is not supported; use one r and "
                               "lora_alpha")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    files = sorted(adapter_dir.glob("adapter_model*.safetensors"))
    if not files:
        raise UnsupportedError(f"quantize scheme int4-lora: {adapter_dir} has no adapter_model.safetensors")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        for key, t in load_file(str(f)).items():
            m = _KEY.match(key)
            if m is None:
                if "lora_embedding" in key or "lora_magnitude" in key:
                    raise UnsupportedError(f"{where}: {key} (embedding LoRA / DoRA) has no side-path form")
                continue
            parts.setdefault(m["module"], {})[m["ab"]] = t.astype(np.float32)
    out = Lora(scaling, path=adapter_dir)
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"{files[0]}: module {module} has lora_{next(iter(ab))} without its pair")
        out.modules[module] = (ab["A"], ab["B"])
    if not out.modules:
        raise ConfigError(f"{files[0]}: no lora_A/lora_B weights found")
    return out


def module_of(node_name: str) -> str:
    """The HF module a MatMul of an optimum export computes: ``/model/layers.0/self_attn/q_proj/MatMul``
    -> ``model.layers.0.self_attn.q_proj``."""
    parts = node_name.strip("/").split("/")
    if parts and parts[-1].startswith("MatMul"):
        parts = parts[:-1]
    return ".".join(parts)


#: onnxruntime-genai builder MatMuls -> the HF modules they compute, in output order (qkv is packed)
_BUILDER = re.compile(r"^/model/layers\.(?P<i>\d+)/(?:attn|mlp)/(?P<proj>\w+)/MatMul")
_BUILDER_PARTS = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  "o_proj": ("self_attn.o_proj",), "gate_proj": ("mlp.gate_proj",), "up_proj": ("mlp.up_proj",),
                  "down_proj": ("mlp.down_proj",)}


def adapter_parts(lora: Lora, node_name: str, shape: tuple[int, int]) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """The adapter's pieces of the MatMul ``node_name`` with weight ``shape`` [K, N]: (first output column, end
    column, A [r, K], B [cols, r]) per HF module it computes; [] when the adapter does not touch it.

    Optimum exports name MatMuls after the HF modules; the onnxruntime-genai builder packs q/k/v into one
    ``qkv_proj`` MatMul (columns in that order) and names the others after their projections.
    """
    k, n = shape
    m = _BUILDER.match(node_name)
    modules = ([f"model.layers.{m['i']}.{p}" for p in _BUILDER_PARTS.get(m["proj"], ())] if m
               else [module_of(node_name)])
    found = [lora.modules.get(mod) for mod in modules]
    if not any(ab is not None for ab in found):
        return []
    if any(ab is None for ab in found):
        raise UnsupportedError(f"{lora.path}: the adapter trains only some of {', '.join(modules)}, which {node_name} "
                               "computes together; train all of them (target_modules: all-linear) or none")
    parts, lo = [], 0
    for mod, (a, b) in zip(modules, found):
        if a.shape[1] != k:
            raise ConfigError(f"{lora.path}: {mod} lora_A has {a.shape[1]} inputs, the exported {node_name} has {k}; "
                              "was it trained on this model?")
        parts.append((lo, lo + b.shape[0], a, b))
        lo += b.shape[0]
    if lo != n:
        raise ConfigError(f"{lora.path}: {', '.join(modules)} have {lo} outputs together, the exported {node_name} has "
                          f"{n}; was it trained on this model?")
    return parts


# --------------------------------------------------------------------------- the base's grid


def fit_grid(b: np.ndarray, block_size: int, tolerance: float):
    """Codes of ``b`` [K, N] on an asymmetric 4-bit grid per block along K with a float step and offset.

    Returns (codes [N, K] uint8, step d [N, kb], offset m [N, kb], on-grid mask [N, kb]). The grid is
    the block's [min, max] over 15 steps — the one GGUF Q4_1 writes, so a base loaded from such a
    file is recovered exactly (every weight within ``tolerance`` steps of its code).
    """
    k, n = b.shape
    kb = k // block_size
    blocks = np.ascontiguousarray(b.T, np.float32).reshape(n, kb, block_size)
    mn = blocks.min(-1)
    d = (blocks.max(-1) - mn) / np.float32(15)
    safe = np.where(d > 0, d, 1).astype(np.float32)
    q = np.clip(np.round((blocks - mn[..., None]) / safe[..., None]), 0, 15)
    resid = np.abs(blocks - (mn[..., None] + q * d[..., None])).max(-1) / safe
    return q.astype(np.uint8).reshape(n, k), d.astype(np.float32), mn.astype(np.float32), resid <= tolerance


# --------------------------------------------------------------------------- the graph rewrite


@dataclass
class _Member:
    node: object
    weight: np.ndarray  # [K, N] as exported (the merged weight)
    lora: tuple[np.ndarray, np.ndarray] | None  # (A [r, K], B [N, r])


def _const(graph, name: str, arr: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(arr, name))
    return name


def _side_matmul(graph, a: str, out: str, name: str, w: np.ndarray, side_path: str, accuracy_level: int,
                 block: int = SIDE_BLOCK):
    """``a @ w`` as MatMulNBits int8 (blocks of ``block`` along K) or a plain fp32 MatMul; returns
    (node, dequantized w)."""
    from onnx import helper

    w = np.ascontiguousarray(w, np.float32)
    if side_path == "fp32":
        return helper.make_node("MatMul", [a, _const(graph, f"{name}_W", w)], [out], name=name), w
    wq = mnb.WeightQuant(8, block, True)
    codes, scales, zp = mnb.rtn_codes(w, wq)
    packed, scales, _ = mnb.pack(codes, scales, zp, wq)
    node = mnb.nbits_node(graph, a, out, name, name, w.shape, wq, packed, scales, None, accuracy_level)
    return node, mnb.dequantize(codes, scales, zp, w.shape[0], block)


def _rewrite_group(graph, x: str, members: list[_Member], o: LoraInt4Options, scaling: float, stats: dict) -> list:
    """Nodes that replace the MatMuls reading ``x``: the shared block sums, then per MatMul int4 + side + Add."""
    from onnx import helper

    bs = o.block_size
    k = members[0].weight.shape[0]
    kb = k // bs
    tag = x.strip("/").replace("/", "_").replace(".", "_").replace(":", "_")
    shape = _const(graph, f"{tag}_blocks_shape", np.array([0, 0, kb, bs], np.int64))
    axes = _const(graph, f"{tag}_blocks_axes", np.array([-1], np.int64))
    nodes = [helper.make_node("Reshape", [x, shape], [f"{tag}_blocks"], name=f"{tag}_blocks"),
             helper.make_node("ReduceSum", [f"{tag}_blocks", axes], [f"{tag}_blocksum"], keepdims=0,
                              name=f"{tag}_blocksum")]
    for m in members:
        node, w = m.node, m.weight
        n = w.shape[1]
        r = m.lora[0].shape[0] if m.lora is not None else 0
        r_pad = -(-r // SIDE_BLOCK) * SIDE_BLOCK  # the adapter rows fill whole int8 blocks, apart from the offsets
        base = w - scaling * (m.lora[1] @ m.lora[0]).T if r else w
        codes, d, mn, on_grid = fit_grid(base, bs, o.grid_tolerance)
        wq = mnb.WeightQuant(4, bs, True)
        packed, scales, _ = mnb.pack(codes, d, None, wq)
        init = f"{node.input[1]}_{node.name.strip('/').replace('/', '_')}"
        main_out, side_out = f"{node.output[0]}_int4", f"{node.output[0]}_side"
        nodes.append(mnb.nbits_node(graph, x, main_out, node.name + "_Q4", init, w.shape, wq, packed, scales, None,
                                    o.accuracy_level))
        # side input z = [x @ A' (r_pad), blocksum(x) (kb)]; side weight = [scaling * B' ; C = m + 8 d]
        side_w = np.zeros((r_pad + kb, n), np.float32)
        side_w[r_pad:] = (mn + 8 * d).T
        a_hat = None
        z = f"{tag}_blocksum"
        if r:
            a_pad = np.zeros((k, r_pad), np.float32)
            a_pad[:, :r] = m.lora[0].T
            lora_a = f"{node.name.strip('/').replace('/', '_')}_lora_a"
            a_node, a_hat = _side_matmul(graph, x, lora_a, lora_a, a_pad, o.side_path, 0, block=o.adapter_block_size)
            z = f"{lora_a}_side_in"
            nodes += [a_node, helper.make_node("Concat", [lora_a, f"{tag}_blocksum"], [z], axis=-1, name=z)]
            side_w[:r] = scaling * m.lora[1].T
        side, side_hat = _side_matmul(graph, z, side_out, node.name + "_side", side_w, o.side_path, o.accuracy_level)
        nodes.append(side)
        nodes.append(helper.make_node("Add", [main_out, side_out], [node.output[0]], name=node.name + "_add"))
        # what the artifact multiplies by, against the exported (merged) weight
        main = mnb.dequantize(codes, d, np.full_like(d, 8).astype(np.uint8), k, bs)
        w_hat = main + np.repeat(side_hat[r_pad:], bs, axis=0)
        if r:
            w_hat = w_hat + a_hat @ side_hat[:r_pad]
        step = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
        err = np.abs(w_hat - w)
        stats[node.name] = {"module": module_of(node.name), "lora_rank": r,
                            "on_grid_fraction": float(on_grid.mean()),
                            "max_abs_weight_error": float(err.max()),
                            "weight_error_p99_steps": float(np.quantile(err, 0.99) / step)}
        if r:
            stats[node.name]["delta_median_steps"] = float(np.median(np.abs(w - base)) / step)
    return nodes


def apply(in_onnx: Path, out_onnx: Path, adapter: Path, opts: LoraInt4Options | None = None, **options) -> dict:
    import onnx
    from onnx import numpy_helper

    o = LoraInt4Options.of(opts, **options)
    lora = load_lora(adapter)
    model = onnx.load(str(in_onnx))
    graph = model.graph
    if not any(op.domain in ("", "ai.onnx") and op.version >= 13 for op in model.opset_import):
        raise UnsupportedError(f"{in_onnx}: int4-lora needs opset >= 13 (ReduceSum with axes as an input)")
    head = mnb.find_head_embed(graph).head
    mats = {name: v for name, v in mnb.weight_matmuls(graph).items() if head is None or name != head.name}
    by_module = {module_of(name): name for name in mats}
    missing = sorted(set(lora.modules) - set(by_module))
    if missing:
        raise UnsupportedError(f"quantize scheme int4-lora: adapter modules without a MatMul in {in_onnx}: "
                               f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; it rewrites the "
                               "optimum export (preset onnx-kv), whose MatMul names follow the HF modules")
    groups: dict[str, list[_Member]] = {}
    for name, (node, init) in mats.items():
        w = numpy_helper.to_array(init).astype(np.float32)
        if w.shape[0] % o.block_size:
            raise UnsupportedError(f"quantize scheme int4-lora: {name} has K={w.shape[0]}, not a multiple of "
                                   f"block_size {o.block_size}; choose a block size that divides it")
        ab = lora.modules.get(module_of(name))
        if ab is not None and (ab[0].shape[1] != w.shape[0] or ab[1].shape[0] != w.shape[1]):
            raise ConfigError(f"{lora.path}: {module_of(name)} lora_A/lora_B shapes {ab[0].shape}/{ab[1].shape} "
                              f"do not fit the exported weight {w.shape}; was it trained on this model?")
        groups.setdefault(node.input[0], []).append(_Member(node, w, ab))
    replaced = {id(m.node): x for x, ms in groups.items() for m in ms}
    stats: dict[str, dict] = {}
    new_nodes, emitted = [], set()
    for node in graph.node:
        x = replaced.get(id(node))
        if x is None:
            new_nodes.append(node)
        elif x not in emitted:  # the whole group goes where its first MatMul was (its input exists by then)
            new_nodes.extend(_rewrite_group(graph, x, groups[x], o, lora.scaling, stats))
            emitted.add(x)
    he = mnb.finish_rewrite(model, new_nodes, o, out_onnx)
    on_grid = float(np.mean([s["on_grid_fraction"] for s in stats.values()]))
    p99 = float(np.max([s["weight_error_p99_steps"] for s in stats.values()]))
    deltas = [s["delta_median_steps"] for s in stats.values() if "delta_median_steps" in s]
    log.info("int4-lora: %d MatMuls (%d with the adapter), base on a 4-bit grid for %.1f%% of blocks, weight error "
             "p99 <= %.3g steps, adapter delta median %.3g steps", len(stats), len(deltas), 100 * on_grid, p99,
             float(np.median(deltas)) if deltas else 0.0)
    return {"bits": 4, "algo": "lora-side-path", **o.model_dump(exclude={"lm_head", "embeddings"}),
            "adapter": str(lora.path), "lora_scaling": lora.scaling, "adapted_matmuls": len(deltas),
            "on_grid_fraction": on_grid, "weight_error_p99_steps_max": p99,
            "adapter_delta_median_steps": float(np.median(deltas)) if deltas else None,
            "layers": stats, **he, **mnb.node_counts(model.graph)}


SCHEMES.register("int4-lora")(Scheme(
    "int4-lora", "int4 base on its own grid + the LoRA adapter unmerged as an int8 side path (MatMulNBits)", "int4",
    None, apply, LoraInt4Options, needs_adapter=True))
