"""``int4-torchao``: int4 MatMulNBits on torchao's per-group grid, the grid ``finetune.qat`` trains on.

Quantization-aware training (:mod:`edgeft.finetune.qat`) runs every linear with its weight
fake-quantized by torchao's ``IntxFakeQuantizer``, per output row and group of ``g`` inputs:

- ``symmetric: true`` (default; ``IntxFakeQuantizeConfig(torch.int4, group_size=g, is_symmetric=True)``,
  the weights of ExecuTorch's 8da4w): scale = the group's largest magnitude / 7.5, code = clamp(round(w /
  scale), -8, 7), stored as MatMulNBits' symmetric layout (code + 8, no zero point), its fast kernel.
- ``symmetric: false`` (``IntxFakeQuantizeConfig(torch.uint4, group_size=g,
  is_symmetric=False, zero_point_domain=FLOAT)``): the group's [min, max] over 15 steps, w = min +
  step * q, q = 0..15. This is GGUF Q4_1's grid: on a model that ships as Q4_1 (the embedded
  SmolLM2) the base weights lie on it exactly, so only what the fine-tune changed is rounded. Stored
  as MatMulNBits with float zero points (``8 - zero_point / scale``: the kernel computes
  ``(q - zp) * scale``). ORT has no fast CPU kernel for float zero points: the quickstart's model
  decodes at 7 tok/s this way vs 61 symmetric (docs/methods.md), and the zero points add 12 MB.

This scheme rounds the exported weights with *the same quantizer*, so the codes the artifact stores
are the ones training saw. ORT's own RTN (``int4-rtn``) uses other grids (integer zero points; the
largest magnitude at -8): a QAT model exported with it loses what QAT bought.

Run on a model trained without QAT, it is plain post-training RTN on the same grid: the PTQ point a
QAT run is compared against ("the same plan").

MatMuls fused along N (the genai builder's QKV and gate/up) group along K exactly like the separate
linears, so their codes are unchanged. The LM head and the token embedding follow ``lm_head`` /
``embeddings`` (int8 by default, as QAT does not fake-quantize them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from edgeft.errors import UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)


class TorchaoInt4Options(mnb.RewriteOptions):
    """Options of int4-torchao."""

    owner: ClassVar[str] = "quantize scheme int4-torchao"
    block_size: mnb.BlockSize = Field(32, description="weights per int4 group along K (finetune.qat.group_size)")
    symmetric: bool = Field(True, description="torchao's symmetric grid (no zero point); false: each group's "
                                              "[min, max] with float zero points, a slower kernel "
                                              "(finetune.qat.symmetric)")


def fake_quantize_config(group_size: int, symmetric: bool = True):
    """torchao's config of the int4 weight grid, per group of ``group_size`` along the input."""
    import torch
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.quant_primitives import ZeroPointDomain

    if symmetric:
        return IntxFakeQuantizeConfig(torch.int4, group_size=group_size, is_symmetric=True)
    return IntxFakeQuantizeConfig(torch.uint4, group_size=group_size, is_symmetric=False,
                                  zero_point_domain=ZeroPointDomain.FLOAT, zero_point_precision=torch.float32)


def fake_quantizer(group_size: int, symmetric: bool = True):
    """A torchao ``IntxFakeQuantizer`` for :func:`fake_quantize_config` (a module: ``fq(w)`` is w on the grid)."""
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    return IntxFakeQuantizer(fake_quantize_config(group_size, symmetric))


class OrtGridFakeQuantizer:
    """ORT MatMulNBits' own symmetric RTN grid (``int4-rtn``/``int4-gptq``: scale = the signed value of largest
    magnitude / -8, so that value is code -8 exactly and nothing clips; :func:`matmulnbits.grid`), rounded as
    ORT rounds (:func:`matmulnbits.to_codes`: times the reciprocal scale, halves up; torchao's primitive
    rounds exact halves the other way, and weights from a 4-bit file have some), with straight-through
    gradients. Same interface as torchao's ``IntxFakeQuantizer``: call it on a weight [N, K]; ``enabled``
    switches it off."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size
        self.enabled = True
        self._hooks: list = []

    def register_forward_hook(self, hook):  # the bit of nn.Module the tests use to count calls
        self._hooks.append(hook)

    def __call__(self, w):
        import torch

        if not self.enabled:
            return w
        for h in self._hooks:
            h(self, (w,), None)
        n, k = w.shape
        g = w.detach().reshape(n, k // self.group_size, self.group_size)
        mx, mn = g.amax(-1), g.amin(-1)
        scale = torch.where(mx.abs() > mn.abs(), mx, mn) / -8.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)[..., None]  # an all-zero group stays zero
        codes = torch.clamp(torch.floor(g * (1.0 / scale) + 8.5), 0, 15)
        rounded = ((codes - 8) * scale).reshape(n, k).to(w.dtype)
        return rounded + (w - w.detach())  # the rounded values, straight-through gradients to w


def weight_quantizer(group_size: int, symmetric: bool = True, grid: str = "torchao"):
    """The weight fake quantizer of a ``finetune.qat`` grid: torchao's (:func:`fake_quantizer`) or ORT's
    (:class:`OrtGridFakeQuantizer`, symmetric only)."""
    if grid == "ort":
        return OrtGridFakeQuantizer(group_size)
    return fake_quantizer(group_size, symmetric)


def codes(w, group_size: int, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Codes, scales and zero points of a weight ``w`` [N, K] (torch or numpy) on the grid: (uint8 codes 0..15
    [N, K], fp32 scales [N, K / group_size], fp32 zero points [N, K / group_size] or None when symmetric, where
    the zero point is 8). ``(codes - zero_point) * scale`` is torchao's fake-quantized ``w``."""
    import torch

    w = torch.as_tensor(np.asarray(w, np.float32) if not isinstance(w, torch.Tensor) else w).float()
    n, k = w.shape
    if k % group_size:
        raise UnsupportedError(f"int4-torchao: a weight with K={k} inputs is not a multiple of the group size "
                               f"{group_size}; choose a group size that divides it")
    fq = fake_quantizer(group_size, symmetric)
    with torch.no_grad():
        wq = fq(w).reshape(n, -1, group_size)
        scale = fq.scale.reshape(n, k // group_size).float()
        if symmetric:
            q, zp = torch.round(wq / scale[..., None]).clamp(-8, 7) + 8, None
        else:  # torchao's float zero point is the value of code 8: w = (q - 8) * scale + zero_point
            zf = fq.zero_point.reshape(n, k // group_size).float()
            q = torch.round((wq - zf[..., None]) / scale[..., None] + 8).clamp(0, 15)
            zp = (8 - zf / scale).numpy().astype(np.float32)
    return q.reshape(n, k).to(torch.uint8).numpy(), scale.numpy().astype(np.float32), zp


def apply(in_onnx: Path, out_onnx: Path, opts: TorchaoInt4Options | None = None, **options) -> dict:
    import onnx
    from onnx import numpy_helper

    o = TorchaoInt4Options.of(opts, **options)
    model = onnx.load(str(in_onnx))
    graph = model.graph
    mats = mnb.body_matmuls(graph, o.nodes_to_exclude)
    wq = mnb.WeightQuant(4, o.block_size, True)  # packing layout of the codes; float zero points go in as they are
    new_nodes, err = [], 0.0
    for node in graph.node:
        if node.name not in mats:
            new_nodes.append(node)
            continue
        b = numpy_helper.to_array(mats[node.name][1]).astype(np.float32)  # [K, N]
        c, s, zp = codes(b.T, o.block_size, o.symmetric)
        packed, scales, _ = mnb.pack(c, s, None, wq)
        base = node.input[1] + f"_{node.name.strip('/').replace('/', '_')}"
        new_nodes.append(mnb.nbits_node(graph, node.input[0], node.output[0], node.name + "_Q4", base, b.shape, wq,
                                        packed, scales, zp, o.accuracy_level))
        # what MatMulNBits will multiply by vs the weight: the rounding, for the report
        deq = (c.reshape(len(c), -1, o.block_size) - (8 if zp is None else zp[..., None])) * s[..., None]
        err = max(err, float(np.abs(deq.reshape(len(c), -1).T - b).max()))
    if not mats:
        raise UnsupportedError(f"int4-torchao: {in_onnx} has no MatMul with a constant 2-D fp32 weight to quantize")
    he = mnb.finish_rewrite(model, new_nodes, o, out_onnx)
    log.info("int4-torchao: %d MatMuls on torchao's %s int4 grid (groups of %d)", len(mats),
             "symmetric" if o.symmetric else "min/max", o.block_size)
    return {"bits": 4, "algo": "rtn-torchao", "block_size": o.block_size, "symmetric": o.symmetric,
            "accuracy_level": o.accuracy_level, "max_weight_rounding": err, **he, **mnb.node_counts(model.graph)}


SCHEMES.register("int4-torchao")(Scheme(
    "int4-torchao", "int4 MatMulNBits on torchao's per-group grid (what finetune.qat trains on)", "int4",
    None, apply, TorchaoInt4Options))
