"""Weight-only quantization of MatMul weights to ORT's MatMulNBits (int4 or int8, block-wise).

Activations stay fp32, so the loss is only the weight rounding. RTN is ORT's default
quantizer; HQQ (half-quadratic) optimizes scales/zero points per block without calibration data.

ORT's quantizer rewrites only MatMuls whose weight is an initializer, so on an optimum LLaMA
export it leaves the token embedding (a Gather) and the LM head (a MatMul over
``Transpose(embedding)`` when the model ties them) in fp32: on SmolLM2-135M that matrix is 28M of
the 135M parameters, two thirds of an int4 artifact. The ``lm_head`` and ``embeddings`` options
(``keep | int8 | int4``) quantize them too, with the scheme's block size and symmetry:

- ``lm_head``: the head becomes a MatMulNBits over the (transposed) embedding matrix;
- ``embeddings``: the Gather becomes ORT's ``GatherBlockQuantized``. When the model ties the two
  and both get the same bits, the Gather reads the head's packed weight through a Reshape (the
  layout onnxruntime-genai's builder uses for ``shared_embeddings``), so the matrix is stored once.

This module also holds the pieces the calibrated schemes (``int4-gptq``, ``auto``) share: the RTN
grid (bit-identical to ORT's C++ ``quantize_matmul_4bits/8bits``), code packing, and a graph
rewrite that turns chosen MatMuls into MatMulNBits with given codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args

import numpy as np
from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)

BlockSize = Literal[16, 32, 64, 128, 256]
AccuracyLevel = Literal[0, 1, 2, 3, 4]
HeadChoice = Literal["keep", "int8", "int4"]
BLOCK_SIZES = get_args(BlockSize)
HEAD_CHOICES = get_args(HeadChoice)
ACCURACY_LEVEL_HELP = "MatMulNBits compute precision for activations: 0 default, 1 fp32, 4 int8"


class NBitsOptions(Options):
    """Options of int4-rtn, int4-hqq and int8-weight."""

    owner: ClassVar[str] = "quantize scheme int4-rtn/int4-hqq/int8-weight"
    block_size: BlockSize = Field(32, description="weights per quantization block (16, 32, 64, 128, 256)")
    symmetric: bool = Field(True, description="symmetric blocks (no zero point); int4-hqq is always asymmetric")
    accuracy_level: AccuracyLevel = Field(4, description=ACCURACY_LEVEL_HELP)
    nodes_to_exclude: list[str] = Field(default_factory=list, description="MatMul node names kept in fp32")
    lm_head: HeadChoice = Field("keep", description="LM head MatMul: keep (fp32), int8 or int4 (MatMulNBits)")
    embeddings: HeadChoice = Field(
        "keep", description="token embedding Gather: keep (fp32), int8 or int4 (GatherBlockQuantized; shares the "
                            "head's packed weight when the model ties them and lm_head has the same bits)")


class RewriteOptions(Options):
    """Options of the schemes that rewrite the body's MatMuls themselves and finish with :func:`finish_rewrite`
    (int4-basegrid, int4-torchao): the kernel's accuracy level, MatMuls kept in fp32, the LM head and embedding."""

    accuracy_level: AccuracyLevel = Field(4, description=ACCURACY_LEVEL_HELP)
    nodes_to_exclude: list[str] = Field(default_factory=list, description="MatMul node names kept in fp32")
    head_block_size: BlockSize = Field(64, description="block of the LM head / embedding when int8")
    lm_head: HeadChoice = Field("int8", description="LM head MatMul: keep, int8 or int4 (RTN)")
    embeddings: HeadChoice = Field("int8", description="token embedding Gather: keep, int8 or int4 (shares the "
                                                       "head's packed weight when tied and at the same bits)")


@dataclass(frozen=True)
class WeightQuant:
    """How one weight is quantized: bits, block size along K, symmetric (no zero point) or not."""

    bits: int
    block_size: int
    symmetric: bool

    def label(self) -> str:
        return f"int{self.bits}/b{self.block_size}" + ("" if self.symmetric else "/asym")


def check_block_size(block_size: int) -> None:
    if block_size not in BLOCK_SIZES:
        raise ConfigError(f"quantize option block_size={block_size}: must be one of "
                          + ", ".join(map(str, BLOCK_SIZES)))


def check_head_choice(option: str, value: str) -> int | None:
    if value not in HEAD_CHOICES:
        raise ConfigError(f"quantize option {option}={value!r}: must be one of {', '.join(HEAD_CHOICES)}")
    return None if value == "keep" else int(value[3:])


# --------------------------------------------------------------------------- grid and packing


def grid(blocks: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per block (last axis) on ORT's MatMulNBits RTN grid.

    Symmetric: scale = (the signed value of largest magnitude) / -2^(bits-1), zero point
    2^(bits-1); asymmetric: the range [min(x, 0), max(x, 0)] over 2^bits - 1 steps. These are the
    formulas of ORT's C++ blockwise quantizer (MLAS), reproduced bit for bit (tested) because GPTQ
    needs the grid per group *during* its column sweep, which the C++ packer does not expose.
    Returns float arrays shaped like ``blocks`` with the last axis reduced to 1.
    """
    blocks = blocks.astype(np.float32, copy=False)
    if symmetric:
        half = float(2 ** (bits - 1))
        mx = blocks.max(-1, keepdims=True)
        mn = blocks.min(-1, keepdims=True)
        signed_max = np.where(np.abs(mx) > np.abs(mn), mx, mn)
        scale = (signed_max / np.float32(-half)).astype(np.float32)
        zp = np.full_like(scale, half)
    else:
        qmax = float(2 ** bits - 1)
        mn = np.minimum(blocks.min(-1, keepdims=True), 0)
        mx = np.maximum(blocks.max(-1, keepdims=True), 0)
        scale = ((mx - mn) / np.float32(qmax)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(scale == 0, 2 ** (bits - 1), np.clip(np.round(-mn / scale), 0, qmax)).astype(np.float32)
    return scale, zp


def to_codes(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (0 .. 2^bits-1) of ``x`` on the grid (scale, zp); a zero scale gives the zero point.

    Rounded as ORT's C++ quantizer rounds: ``x`` times the fp32 reciprocal of the scale, plus the zero point,
    halves up. It differs from ``round(x / scale)`` only on exact halves, which are common in weights that
    came from a 4-bit file (52 of SmolLM2's 106M codes)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (np.float32(1) / scale).astype(np.float32)
        q = np.where(scale == 0, zp, np.floor((x * inv).astype(np.float32) + (zp + np.float32(0.5))))
    return np.clip(q, 0, 2 ** bits - 1)


def rtn_codes(b: np.ndarray, wq: WeightQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest codes of a MatMul weight ``b`` [K, N]: (codes [N, K_pad] uint8, scales [N, kb], zp [N, kb])."""
    k, n = b.shape
    kb = -(-k // wq.block_size)
    w = np.zeros((n, kb * wq.block_size), np.float32)
    w[:, :k] = b.T
    blocks = w.reshape(n, kb, wq.block_size)
    scale, zp = grid(blocks, wq.bits, wq.symmetric)
    codes = to_codes(blocks, scale, zp, wq.bits).reshape(n, -1).astype(np.uint8)
    codes[:, k:] = 0  # padding past K: ORT's packer writes zeros there
    return codes, scale[..., 0], zp[..., 0].astype(np.uint8)


def dequantize(codes: np.ndarray, scales: np.ndarray, zp: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """The weight [K, N] that a MatMulNBits with these codes multiplies by (fp32)."""
    n = codes.shape[0]
    kb = scales.shape[1]
    c = codes.reshape(n, kb, block_size).astype(np.float32)
    w = (c - zp[..., None].astype(np.float32)) * scales[..., None]
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)


def pack(codes: np.ndarray, scales: np.ndarray, zp: np.ndarray, wq: WeightQuant):
    """MatMulNBits inputs from codes: (B [N, kb, blob] uint8, scales [N, kb] f32, zero points or None)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

    n, kpad = codes.shape
    kb = kpad // wq.block_size
    if wq.bits == 4:
        # ORT's own nibble packer (low nibble first), the layout MatMulNBits and GatherBlockQuantized read.
        packed = DefaultWeightOnlyQuantizer.pack_int8_to_int4(codes).reshape(n, kb, wq.block_size // 2)
        zpk = None
        if not wq.symmetric:
            zpad = np.full((n, kb + kb % 2), 8, np.uint8)  # an odd block count: ORT pads the last nibble with 8
            zpad[:, :kb] = zp
            zpk = DefaultWeightOnlyQuantizer.pack_int8_to_int4(zpad).reshape(n, -1)
    elif wq.bits == 8:
        packed = codes.reshape(n, kb, wq.block_size).astype(np.uint8)
        zpk = None if wq.symmetric else zp.astype(np.uint8)
    else:
        raise UnsupportedError(f"MatMulNBits packing for {wq.bits} bits: use 4 or 8")
    return np.ascontiguousarray(packed), np.ascontiguousarray(scales.astype(np.float32)), zpk


def ort_rtn_pack(b: np.ndarray, wq: WeightQuant):
    """RTN with ORT's C++ packer (``quantize_matmul_4bits/8bits``): the same result as ``pack(*rtn_codes(b))``."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = b.shape
    kb = -(-k // wq.block_size)
    per = 8 // wq.bits
    packed = np.zeros((n, kb, wq.block_size * wq.bits // 8), np.uint8)
    zp = np.zeros((n, -(-kb // per)), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    fn = quantize_matmul_4bits if wq.bits == 4 else quantize_matmul_8bits
    fn(packed, np.ascontiguousarray(b, np.float32), scales, zp, wq.block_size, n, k, wq.symmetric)
    return packed, scales, (None if wq.symmetric else zp)


# --------------------------------------------------------------------------- graph helpers


def weight_matmuls(graph) -> dict[str, tuple]:
    """{node name: (node, weight initializer)} for MatMuls whose B input is a 2-D float initializer."""
    from onnx import TensorProto

    inits = {i.name: i for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits:
            t = inits[n.input[1]]
            if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT:
                out[n.name] = (n, t)
    return out


def body_matmuls(graph, nodes_to_exclude=()) -> dict[str, tuple]:
    """:func:`weight_matmuls` less the LM head (it follows the ``lm_head`` option) and ``nodes_to_exclude``."""
    head = find_head_embed(graph).head
    skip = set(nodes_to_exclude) | ({head.name} if head is not None else set())
    return {name: v for name, v in weight_matmuls(graph).items() if name not in skip}


@dataclass
class HeadEmbed:
    """Where the LM head and token embedding are: the head MatMul, its weight source, the Gather."""

    head: object | None = None  # MatMul node producing the logits
    head_weight: str | None = None  # initializer [H, V] (untied) ...
    transpose: object | None = None  # ... or a Transpose node of the embedding (tied)
    gather: object | None = None  # Gather over the embedding initializer
    embedding: str | None = None  # embedding initializer [V, H] ...
    embed_transpose: object | None = None  # ... or [H, V] read through this Transpose (onnxruntime-genai graphs)
    tied: bool = False  # the head multiplies by the embedding's transpose (a Transpose node or an equal copy)


def find_head_embed(graph) -> HeadEmbed:
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    graph_inputs = {i.name for i in graph.input}
    he = HeadEmbed()
    for n in graph.node:
        if (n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
                and n.input[1] in graph_inputs):
            he.gather, he.embedding = n, n.input[0]
            break
        src = producers.get(n.input[0]) if n.op_type == "Gather" and n.input[1] in graph_inputs else None
        if (src is not None and src.op_type == "Transpose" and src.input[0] in inits
                and len(inits[src.input[0]].dims) == 2):
            # onnxruntime-genai's builder keeps one [H, V] matrix for a tied head and embeds through its transpose
            he.gather, he.embedding, he.embed_transpose = n, src.input[0], src
            break
    outputs = [o.name for o in graph.output]
    logits = "logits" if "logits" in outputs else (outputs[0] if outputs else None)
    node = producers.get(logits)
    if node is not None and node.op_type == "MatMul":
        he.head = node
        b = node.input[1]
        if b in inits and len(inits[b].dims) == 2:
            he.head_weight = b
        elif b in producers and producers[b].op_type == "Transpose" and producers[b].input[0] in inits:
            he.transpose = producers[b]
    if he.transpose is not None:
        he.tied = he.transpose.input[0] == he.embedding
    elif he.embed_transpose is not None:
        he.tied = he.head_weight == he.embedding
    elif he.head_weight is not None and he.embedding is not None:
        # torch.onnx writes a tied matrix twice (embedding [V, H] and the head's [H, V] copy): same values
        from onnx import numpy_helper

        hw, emb = inits[he.head_weight], inits[he.embedding]
        if list(hw.dims) == list(emb.dims)[::-1]:
            he.tied = bool(np.array_equal(numpy_helper.to_array(hw), numpy_helper.to_array(emb).T))
    return he


def nbits_node(graph, a: str, out: str, name: str, base: str, b_shape: tuple[int, int], wq: WeightQuant,
               packed, scales, zp, accuracy_level: int):
    """Add the packed initializers and return a MatMulNBits node computing ``a @ B``."""
    from onnx import helper, numpy_helper

    k, n = b_shape
    graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_Q{wq.bits}"),
                              numpy_helper.from_array(scales, f"{base}_scales")])
    inputs = [a, f"{base}_Q{wq.bits}", f"{base}_scales"]
    if zp is not None:
        graph.initializer.append(numpy_helper.from_array(zp, f"{base}_zero_points"))
        inputs.append(f"{base}_zero_points")
    attrs = {"K": k, "N": n, "bits": wq.bits, "block_size": wq.block_size}
    if accuracy_level:
        attrs["accuracy_level"] = int(accuracy_level)
    return helper.make_node("MatMulNBits", inputs, [out], name=name, domain="com.microsoft", **attrs)


def _ensure_ms_opset(model) -> None:
    from onnx import helper

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
        del graph.initializer[:]
        graph.initializer.extend(keep)
        inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(inputs)


def replace_matmuls(model, plan: dict[str, WeightQuant], accuracy_level: int = 4,
                    codes: dict[str, tuple] | None = None) -> dict[str, str]:
    """Rewrite the MatMuls named in ``plan`` into MatMulNBits (in place); returns {node: label}.

    ``codes`` gives precomputed (codes, scales, zp) per node (GPTQ); other nodes get RTN from
    ORT's C++ packer.
    """
    from onnx import numpy_helper

    graph = model.graph
    mats = weight_matmuls(graph)
    missing = sorted(set(plan) - set(mats))
    if missing:
        raise ConfigError(f"quantize plan names MatMuls without a 2-D fp32 weight: {', '.join(missing[:5])}")
    done = {}
    new_nodes = []
    for node in graph.node:
        wq = plan.get(node.name) if node.op_type == "MatMul" else None
        if wq is None:
            new_nodes.append(node)
            continue
        b = numpy_helper.to_array(mats[node.name][1]).astype(np.float32)
        if codes and node.name in codes:
            packed, scales, zp = pack(*codes[node.name], wq)
        else:
            packed, scales, zp = ort_rtn_pack(b, wq)
        base = node.input[1] + f"_{node.name.strip('/').replace('/', '_')}"
        new_nodes.append(nbits_node(graph, node.input[0], node.output[0], node.name + f"_Q{wq.bits}", base, b.shape,
                                    wq, packed, scales, zp, accuracy_level))
        done[node.name] = wq.label()
    del graph.node[:]
    graph.node.extend(new_nodes)
    _ensure_ms_opset(model)
    drop_unused_initializers(graph)
    return done


def quantize_head_embed(model, lm_head: str, embeddings: str, block_size: int, symmetric: bool,
                        accuracy_level: int = 4) -> dict:
    """Apply the ``lm_head`` / ``embeddings`` options (in place); returns what was done, for the report."""
    # Over 80 lines: the LM head and the (possibly tied) embedding table are decided together: shared, int8 or int4
    # head, int8 or int4 table, each a few graph edits on the same initializers.
    from onnx import helper, numpy_helper

    head_bits = check_head_choice("lm_head", lm_head)
    emb_bits = check_head_choice("embeddings", embeddings)
    info = {"lm_head": lm_head, "embeddings": embeddings}
    if head_bits is None and emb_bits is None:
        return info
    graph = model.graph
    he = find_head_embed(graph)
    inits = {i.name: i for i in graph.initializer}
    if head_bits is not None and he.head is None:
        raise UnsupportedError("quantize option lm_head: no MatMul produces the graph's logits output; use lm_head: keep")
    if head_bits is not None and he.head_weight is None and he.transpose is None:
        raise UnsupportedError(f"quantize option lm_head: the head MatMul {he.head.name} has no constant weight "
                               "(initializer or Transpose of one); use lm_head: keep")
    if emb_bits is not None and he.gather is None:
        raise UnsupportedError("quantize option embeddings: no Gather over a 2-D initializer indexed by a graph "
                               "input (input_ids); use embeddings: keep")
    replace: dict[int, list] = {}  # id(old node) -> new nodes
    head_packed = None
    if head_bits is not None:
        wq = WeightQuant(head_bits, block_size, symmetric)
        if he.head_weight is not None:
            b = numpy_helper.to_array(inits[he.head_weight]).astype(np.float32)
            base = he.head_weight
        else:
            src = numpy_helper.to_array(inits[he.transpose.input[0]]).astype(np.float32)
            perm = list(helper.get_attribute_value(a) for a in he.transpose.attribute if a.name == "perm")
            b = np.ascontiguousarray(src.T if not perm or list(perm[0]) == [1, 0] else np.transpose(src, perm[0]))
            base = he.transpose.input[0] + "_lm_head"
        packed, scales, zp = ort_rtn_pack(b, wq)
        replace[id(he.head)] = [nbits_node(graph, he.head.input[0], he.head.output[0], he.head.name + f"_Q{head_bits}",
                                           base, b.shape, wq, packed, scales, zp, accuracy_level)]
        head_packed = (base, wq, b.shape, zp is not None)
        info["lm_head_block"] = wq.label()
    if emb_bits is not None:
        wq = WeightQuant(emb_bits, block_size, symmetric)
        e = inits[he.embedding]
        vocab, hidden = e.dims[::-1] if he.embed_transpose is not None else e.dims
        kb = -(-hidden // block_size)
        flat = kb * block_size * emb_bits // 8
        nodes = []
        shared = head_packed is not None and he.tied and head_packed[1] == wq
        if shared:
            base = head_packed[0]
            shape_name = f"{base}_gather_shape"
            graph.initializer.append(numpy_helper.from_array(np.array([vocab, flat], np.int64), shape_name))
            data = f"{base}_Q{emb_bits}_flat"
            nodes.append(helper.make_node("Reshape", [f"{base}_Q{emb_bits}", shape_name], [data],
                                          name=he.gather.name + "_shared_reshape"))
            scales_name = f"{base}_scales"
            zp_name = f"{base}_zero_points" if head_packed[3] else None
        else:
            arr = numpy_helper.to_array(e).astype(np.float32)
            packed, scales, zp = ort_rtn_pack(np.ascontiguousarray(arr if he.embed_transpose is not None else arr.T),
                                              wq)
            base = he.embedding + "_gather"
            data = f"{base}_Q{emb_bits}"
            graph.initializer.extend([numpy_helper.from_array(packed.reshape(vocab, flat), data),
                                      numpy_helper.from_array(scales, f"{base}_scales")])
            scales_name = f"{base}_scales"
            zp_name = None
            if zp is not None:
                zp_name = f"{base}_zero_points"
                graph.initializer.append(numpy_helper.from_array(zp, zp_name))
        inputs = [data, he.gather.input[1], scales_name] + ([zp_name] if zp_name else [])
        padded = kb * block_size != hidden
        out = he.gather.output[0] + ("_padded" if padded else "")
        nodes.append(helper.make_node("GatherBlockQuantized", inputs, [out], name=he.gather.name + f"_Q{emb_bits}",
                                      domain="com.microsoft", bits=emb_bits, block_size=block_size, gather_axis=0,
                                      quantize_axis=1))
        if padded:  # rows are padded to whole blocks: cut the padding off the gathered vectors
            consts = {"starts": [0], "ends": [hidden], "axes": [-1]}
            for k, v in consts.items():
                graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), f"{base}_slice_{k}"))
            nodes.append(helper.make_node("Slice", [out] + [f"{base}_slice_{k}" for k in consts],
                                          [he.gather.output[0]], name=he.gather.name + "_unpad"))
        replace[id(he.gather)] = nodes
        info["embeddings_block"] = wq.label()
        info["embeddings_shared_with_lm_head"] = bool(shared)
    new_nodes = []
    for n in graph.node:
        new_nodes.extend(replace.get(id(n), [n]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    for t in (he.transpose, he.embed_transpose):
        if t is not None and not any(t.output[0] in n.input for n in graph.node):
            graph.node.remove(t)
    _ensure_ms_opset(model)
    drop_unused_initializers(graph)
    return info


def save_model(model, out_onnx: Path) -> None:
    """Save (weights inline; a separate data file past protobuf's 2 GB limit)."""
    import onnx

    large = model.ByteSize() > 1.8 * 2**30 if hasattr(model, "ByteSize") else False
    if large:
        onnx.save_model(model, str(out_onnx), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(out_onnx).name + ".data")
    else:
        onnx.save_model(model, str(out_onnx))


def finish_rewrite(model, new_nodes: list, o, out_onnx: Path) -> dict:
    """The last steps of a scheme that rewrote the graph's MatMuls itself (int4-lora, int4-basegrid): the new
    node list in place, the com.microsoft opset, unused weights dropped, the LM head and embedding quantized
    by ``o.lm_head`` / ``o.embeddings`` (at ``o.head_block_size`` when int8), saved. Returns the head/embedding
    report."""
    graph = model.graph
    del graph.node[:]
    graph.node.extend(new_nodes)
    _ensure_ms_opset(model)
    drop_unused_initializers(graph)
    he = quantize_head_embed(model, o.lm_head, o.embeddings,
                             o.head_block_size if "int8" in (o.lm_head, o.embeddings) else o.block_size, True,
                             o.accuracy_level)
    save_model(model, out_onnx)
    return he


def node_counts(graph) -> dict:
    ops = [n.op_type for n in graph.node]
    return {"quantized_matmuls": ops.count("MatMulNBits"), "fp32_matmuls": ops.count("MatMul"),
            "quantized_gathers": ops.count("GatherBlockQuantized")}


# --------------------------------------------------------------------------- the registered schemes


def _quantize(in_onnx: Path, out_onnx: Path, bits: int, algo: str, opts: NBitsOptions | None = None,
              **options) -> dict:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    o = NBitsOptions.of(opts, **options)
    symmetric = o.symmetric and algo != "hqq"  # HQQ's zero points are floats: asymmetric by construction
    model = onnx.load(str(in_onnx))
    # The head follows lm_head (keep | int8 | int4) alone: ORT's quantizer would take a head MatMul whose weight is
    # an initializer (onnxruntime-genai graphs; optimum's tied head reads a Transpose, which it skips).
    head_node = find_head_embed(model.graph).head
    exclude = list(o.nodes_to_exclude) + ([head_node.name] if head_node is not None else [])
    algo_config = None
    if algo == "hqq":
        algo_config = mnq.HQQWeightOnlyQuantConfig(block_size=o.block_size, bits=bits)
    elif algo == "rtn":
        algo_config = mnq.DefaultWeightOnlyQuantConfig(block_size=o.block_size, is_symmetric=symmetric,
                                                       accuracy_level=o.accuracy_level, bits=bits)
    q = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=o.block_size, is_symmetric=symmetric,
                                 accuracy_level=o.accuracy_level, nodes_to_exclude=exclude, algo_config=algo_config)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))  # ORT logs per node at INFO
    q.process()
    model = q.model.model
    # The head/embedding options use RTN on ORT's grid (HQQ's float zero points do not fit GatherBlockQuantized).
    head = quantize_head_embed(model, o.lm_head, o.embeddings, o.block_size, symmetric, o.accuracy_level)
    save_model(model, out_onnx)
    return {"bits": bits, "algo": algo, "block_size": o.block_size, "symmetric": symmetric,
            "accuracy_level": o.accuracy_level, **head, **node_counts(model.graph)}


def rtn4(in_onnx, out_onnx, opts: NBitsOptions | None = None, **options):
    return _quantize(in_onnx, out_onnx, 4, "rtn", opts, **options)


def rtn8(in_onnx, out_onnx, opts: NBitsOptions | None = None, **options):
    return _quantize(in_onnx, out_onnx, 8, "rtn", opts, **options)


def hqq4(in_onnx, out_onnx, opts: NBitsOptions | None = None, **options):
    return _quantize(in_onnx, out_onnx, 4, "hqq", opts, **options)


SCHEMES.register("int4-rtn")(Scheme("int4-rtn", "int4 weight-only MatMulNBits, round-to-nearest", "int4", None,
                                    rtn4, NBitsOptions))
SCHEMES.register("int4-hqq")(Scheme("int4-hqq", "int4 weight-only MatMulNBits, HQQ (asymmetric)", "int4", None,
                                    hqq4, NBitsOptions))
SCHEMES.register("int8-weight")(Scheme("int8-weight", "int8 weight-only MatMulNBits (bits=8), activations fp32",
                                       "int8", "weight-only", rtn8, NBitsOptions))
