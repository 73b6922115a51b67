"""ExecuTorch export (``model.pte``, XNNPACK delegate) of a causal LM or a sequence classifier.

Pipeline: optional torchao ``quantize_`` on the eager model, ``torch.export``, then
``executorch.exir.to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` and
``to_executorch``. The resulting program runs in the ExecuTorch runtime of an Android/iOS app
(XNNPACK on Arm and x86 CPUs) and here through :mod:`edgeft.runtime.executorch`.

Causal LM: transformers' own export recipe, ``transformers.integrations.executorch.
TorchExportableModuleForDecoderOnlyLM`` (a ``StaticCache`` of ``max_cache_len`` slots registered as
module buffers; mask creation without ``vmap``). The cache buffers become the program's mutable
buffers and persist between calls. This is the code optimum-executorch wraps; optimum-executorch
itself is not used because it pins transformers 5.0.0rc1 (this project runs transformers 4.57).
Two layouts (``shapes`` option):

- ``static`` (default): two methods exported at static shapes from the same recipe and lowered
  into one program, ``forward(input_ids [1, 1], cache_position [1])`` (a decode step) and
  ``prefill(input_ids [1, C], cache_position [C])`` with C = ``prefill_chunk``. Memory planning
  shares the cache buffers between them (``MemoryPlanningPass(share_mutable_buffers=True)``,
  ``emit_mutable_buffer_names``); the weights are stored once. The runtime feeds a prompt through
  ``prefill`` C tokens at a time (see :mod:`edgeft.runtime.executorch` for the padded last chunk).
- ``dynamic``: one ``forward(input_ids [1, n], cache_position [n])`` with a dynamic ``seq_len``
  serving prefill and decode. Each static method lowers faster than the dynamic one (no sympy
  symbolic-shape work), but there are two: on SmolLM2-135M and the tiny test model the whole
  lowering takes about as long either way (docs/benchmarks.md).

Classifier (``*ForSequenceClassification``): ``forward(input_ids, attention_mask)`` -> logits at a
static ``1 x seq`` shape (``export.static_shapes.seq`` or the ``seq_len`` option).

Quantization (``quantization`` option), torchao 0.18 configs applied with ``quantize_``:

- ``8da4w``: ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
  weight_granularity=PerGroup(group_size))`` on every ``nn.Linear`` (LM head included unless
  ``lm_head`` says otherwise): int8 per-token dynamic activations, symmetric int4 weights in groups;
  XNNPACK runs them as its QD8-QB4W GEMMs. ``int8_linears`` (Linear-name suffixes, e.g.
  ``[v_proj, down_proj]``) puts those layers on the 8da8w config below instead.
- ``8da8w`` (preset ``executorch-int8w``): ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
  weight_granularity=PerAxis(0))`` on every ``nn.Linear``: int8 weights per output channel with int8
  dynamic activations (XNNPACK's QD8-QC8W GEMMs). Weight-only int8 linears
  (``IntxWeightOnlyConfig``) are refused: XNNPACK's lowering of them gives wrong logits here (see
  ``WEIGHT_ONLY_INT8``); weight-only int8 stays in use for the token embedding, which XNNPACK does
  not take.
- token embedding (``embedding`` option, quantized presets): ``IntxWeightOnlyConfig(int8,
  PerAxis(0))`` on ``nn.Embedding`` (one scale per row), fused at ``to_executorch`` into
  ``quantized_decomposed::embedding_byte`` (``do_quant_fusion_and_const_prop``); ``fp32`` keeps it.
  With tied embeddings the LM head is quantized as a Linear and the embedding separately, so the
  tie is undone (two tensors in the file).

Gotchas met here (torch 2.13, executorch 1.5.1, transformers 4.57): ``torch.export`` must be
strict (non-strict export of the static-cache module fails later in ``run_decompositions`` with
"expected compiled_fn to be GraphModule"); the embedding's ``padding_idx`` is cleared before export
(it only matters for training, and ``aten.embedding(w, ids, padding_idx)`` does not match
ExecuTorch's embedding_byte fusion pattern, leaving an unrunnable ``torchao::dequantize_affine``).

Checks: fp32 -> max |logit diff| vs eager PyTorch on the sample ids (prefill and a few cached
decode steps, teacher-forced) against the tolerance (:class:`ParityError` past it), plus perplexity
on the held-out windows; quantized -> top-1 agreement, max |diff| and perplexity vs the fp32
PyTorch model, failing below ``min_top1_agreement`` (or past ``max_ppl_increase_pct``).
Everything is written to a staging folder renamed to ``out_dir`` at the end.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from edgeft.config.options import Options, option_table
from edgeft.errors import ConfigError, ModelSourceError, ParityError, UnsupportedError
from edgeft.exporters.registry import EXPORTERS
from edgeft.exporters.parity import cached_decoder_parity, check_outputs

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "8da4w", "8da8w")
class ExecuTorchOptions(Options):
    """Options of pte (ExecuTorch) presets."""

    owner: ClassVar[str] = "executorch export"
    quantization: Literal["none", "8da4w", "8da8w", "int8w"] = Field(
        "none", description="none (fp32), 8da4w (int8 dynamic activations, int4 grouped weights) or 8da8w (int8 "
                            "dynamic activations, int8 weights per output channel); int8w is refused "
                            "(see WEIGHT_ONLY_INT8)")
    group_size: int = Field(32, gt=0, description="8da4w: input channels per int4 weight scale")
    embedding: Literal["int8", "fp32"] = Field("int8", description="quantized presets: token embedding int8 "
                                                                    "weight-only (per row) or fp32")
    lm_head: Literal["same", "int8", "fp32"] = Field(
        "same", description="8da4w: LM head like the body (same), int8 weights with int8 dynamic activations, or fp32")
    int8_linears: list[str] = Field(
        default_factory=list, description="8da4w: Linear-name suffixes (e.g. [v_proj, down_proj]) quantized 8da8w "
                                          "(int8 weights per output channel, int8 dynamic activations) instead of int4")
    max_cache_len: int = Field(512, gt=0, description="causal LM: tokens the static KV cache holds (prompt + "
                                                       "generated)")
    shapes: Literal["static", "dynamic"] = Field(
        "static", description="causal LM: static (a one-token forward for decode plus a prefill of prefill_chunk "
                              "tokens, sharing the KV cache) or dynamic (one forward of any length up to "
                              "max_cache_len, the older layout)")
    prefill_chunk: int = Field(32, ge=2, description="causal LM, static shapes: tokens per prefill call (the prompt "
                                                      "is fed in chunks, the last one right-padded); < max_cache_len")
    xnnpack_rewrite: bool = Field(
        True, description="causal LM: attention as bmm + softmax and RMSNorm's mean as a Linear, so each decoder "
                          "layer lowers as one XNNPACK partition (off: transformers' SDPA and RMSNorm, ~5 a layer)")
    seq_len: int = Field(128, gt=0, description="classifier: static input length when export.static_shapes is not set")
    decode_steps: int = Field(4, ge=0, description="causal LM parity: cached one-token steps after the prefill")
    min_top1_agreement: float = Field(0.80, ge=0, le=1, description="quantized: fail below this top-1 (label) "
                                                                      "agreement with the fp32 model")
    max_ppl_increase_pct: float = Field(25.0, description="causal LM: fail when held-out perplexity rises more than "
                                                          "this vs fp32")

    @property
    def precision(self) -> str:
        """8da4w: int4 weights (int8 dynamic activations); 8da8w: int8 weights."""
        return {"8da4w": "int4", "8da8w": "int8"}.get(self.quantization, "fp32")

    @property
    def int8_mode(self) -> str | None:
        return "dynamic" if self.quantization in ("8da4w", "8da8w") else None


OPTIONS = option_table(ExecuTorchOptions)
EXTRA = "pip install 'edgeft[executorch]'"
WEIGHT_ONLY_INT8 = (
    "executorch option quantization=int8w (int8 weight-only linears) is refused: with executorch 1.5.1 and torchao "
    "0.18 XNNPACK lowers IntxWeightOnlyConfig linears to a program whose logits are wrong (max |diff| ~1.8e3 vs "
    "PyTorch on the tiny test LLaMA, same file size as fp32); use quantization 8da8w (int8 weights with int8 "
    "dynamic activations, preset executorch-int8w) or 8da4w")


def _exir():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    except ImportError as e:
        raise UnsupportedError(f"executorch export needs ExecuTorch and torchao: {EXTRA} ({e})") from e
    return to_edge_transform_and_lower, XnnpackPartitioner, ExecutorchBackendConfig


def int8_linear_names(model, suffixes: Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` whose name ends in one of ``suffixes`` (a whole name
    segment: ``v_proj`` matches ``model.layers.0.self_attn.v_proj``); a suffix matching none is a ConfigError."""
    import torch

    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    hit = {s: [n for n in linears if n == s or n.endswith("." + s)] for s in suffixes}
    bad = [s for s, names in hit.items() if not names]
    if bad:
        last = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ConfigError(f"executorch option int8_linears: {', '.join(map(repr, bad))} matches no Linear of "
                          f"{type(model).__name__} (Linear names end in: {', '.join(last)})")
    return [n for n in linears if any(n in names for names in hit.values())]


def quantize_model(model, quantization: str, group_size: int, embedding: str, lm_head: str = "same",
                   int8_linears: Sequence[str] = ()) -> dict:
    """Apply the torchao config(s) for ``quantization`` to ``model`` in place; return what was done."""
    import torch

    if int8_linears and quantization != "8da4w":
        raise ConfigError(f"executorch option int8_linears applies to quantization 8da4w (int8 instead of int4 "
                          f"for some linears); quantization is {quantization}")
    if quantization == "none":
        return {"linear": "fp32", "embedding": "fp32"}
    try:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError as e:
        raise UnsupportedError(f"executorch quantization needs torchao: {EXTRA} ({e})") from e
    done = {"embedding": "fp32"}
    if embedding == "int8":
        quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Embedding))
        done["embedding"] = "IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))"
    if quantization == "8da4w":
        bad = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % group_size]
        if bad:
            raise UnsupportedError(f"8da4w: group_size {group_size} does not divide the input width of {bad[0]} "
                                   f"({len(bad)} Linear layers); pick a group_size that divides every width")
        int8 = "Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, PerAxis(0))"
        named = int8_linear_names(model, int8_linears)  # before any quantize_: a bad suffix fails first
        head = getattr(model, "lm_head", None) if lm_head != "same" else None
        if head is not None and lm_head == "int8":
            quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                   weight_granularity=PerAxis(0)),
                      filter_fn=lambda m, _fqn: m is head)
            done["lm_head"] = int8
        elif head is not None:
            done["lm_head"] = "fp32"
        if named:
            keep = set(named)
            quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                   weight_granularity=PerAxis(0)),
                      filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in keep and m is not head)
            done["int8_linears"] = {"config": int8, "suffixes": list(int8_linears), "names": named}
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                               weight_granularity=PerGroup(group_size)),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and m is not head and fqn not in named)
        done["linear"] = f"Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, PerGroup({group_size}))"
    else:
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)))
        done["linear"] = "Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, PerAxis(0))"
    return done


def _clear_padding_idx(model) -> None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            m.padding_idx = None  # inference is unchanged; see the module docstring


def _op_name(target) -> str:
    s = str(target)  # "<EdgeOpOverload: aten.view_copy.default>: schema = ..." or "aten.sym_size.int"
    return s.split(">")[0].split(": ", 1)[1] if s.startswith("<EdgeOpOverload") else s


@contextlib.contextmanager
def _shallow_provenance():
    """While lowering, share the ``from_node`` provenance lists between a node and the nodes a pass makes from it
    instead of deep-copying them (``torch.fx.traceback.NodeSource``). Each of the ~20 ExecuTorch and XNNPACK passes
    re-creates every node and the deep copy grows with the chain of passes before it: on SmolLM2 it was ~15% of the
    lowering. The provenance is debugging metadata (read by ``torch.fx.traceback`` printing and ETRecord), which this
    export does not write. A torch whose ``NodeSource`` differs is left alone."""
    from torch.fx import traceback as fx_traceback

    source = getattr(fx_traceback, "NodeSource", None)
    orig = getattr(source, "__init__", None)
    try:
        params = list(inspect.signature(orig).parameters) if orig is not None else []
    except (TypeError, ValueError):
        params = []
    if params[:4] != ["self", "node", "pass_name", "action"]:
        yield
        return

    def init(self, node, pass_name="", action=None):
        meta = getattr(node, "meta", None) if node else None
        chain = meta.pop("from_node", None) if isinstance(meta, dict) else None
        try:
            orig(self, node, pass_name, action)
        finally:
            if chain is not None:
                meta["from_node"] = chain
        if chain is not None:
            self.from_node = list(chain)

    source.__init__ = init
    try:
        yield
    finally:
        source.__init__ = orig


def lower(exported) -> tuple[bytes, dict]:
    """``ExportedProgram`` (or ``{method: ExportedProgram}``) -> (.pte bytes, delegation summary) through XNNPACK.

    Several methods are lowered into one program whose mutable buffers (the KV cache) are shared
    between them (``share_mutable_buffers``) and left out of the input planning; constants are stored
    once in the file (XNNPACK's weights go to the program's named data, keyed by content)."""
    with _shallow_provenance():
        return _lower(exported)


def _lower(exported) -> tuple[bytes, dict]:
    to_edge_transform_and_lower, XnnpackPartitioner, ExecutorchBackendConfig = _exir()
    if isinstance(exported, dict):
        from executorch.exir.passes import MemoryPlanningPass

        edge = to_edge_transform_and_lower(exported, partitioner={k: [XnnpackPartitioner()] for k in exported})
        config = ExecutorchBackendConfig(
            do_quant_fusion_and_const_prop=True, emit_mutable_buffer_names=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True))
        names = list(exported)
    else:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        config = ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True)
        names = ["forward"]
    calls = [n for name in names for n in edge.exported_program(name).graph.nodes if n.op == "call_function"]
    delegates = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    portable = sorted({_op_name(n.target) for n in calls
                       if "delegate" not in str(n.target) and "getitem" not in str(n.target)})
    program = edge.to_executorch(config)
    return program.buffer, {"xnnpack_partitions": delegates, "portable_ops": portable}


# --------------------------------------------------------------------------- causal LM

XNNPACK_ATTENTION = "edgeft_xnnpack"


def _additive_causal_mask(*args, **kwargs):
    """transformers' export mask (boolean, no ``vmap``) as an additive float mask, built once per call and shared
    by every layer; the causal skip is off so prefill always gets its mask."""
    import torch
    from transformers.integrations.executorch import sdpa_mask_without_vmap

    kwargs["allow_is_causal_skip"] = False
    keep = sdpa_mask_without_vmap(*args, **kwargs)
    return torch.where(keep, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))


def _bmm_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention from ``bmm``, an add and a softmax, which XNNPACK takes whole. Grouped-query heads are folded into
    the rows of each KV head's product instead of repeating K and V (``repeat_kv``'s 5-D expand and ``matmul``'s
    broadcast expand stay outside the delegate and split every layer into several partitions). Plain causal
    attention only: a model asking for more (sliding window, logit soft-capping, attention sinks) is refused."""
    import torch

    extra = sorted(k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None)
    if extra:
        raise UnsupportedError(f"executorch export: {type(module).__name__} uses {', '.join(extra)}, which the "
                               "XNNPACK attention rewrite does not implement; set the option xnnpack_rewrite: false")
    b, h, s, d = query.shape
    hkv, length = key.shape[1], key.shape[2]
    g = h // hkv
    scores = torch.bmm(query.reshape(b * hkv, g * s, d), key.reshape(b * hkv, length, d).transpose(1, 2)) * scaling
    scores = scores.reshape(b, h, s, length) + attention_mask[:, :, :, :length]
    probs = torch.softmax(scores, dim=-1).reshape(b * hkv, g * s, length)
    out = torch.bmm(probs, value.reshape(b * hkv, length, d)).reshape(b, h, s, d)
    return out.transpose(1, 2).contiguous(), None


def _rms_norm_forward(self, x):
    import torch

    dtype = x.dtype
    x = x.to(torch.float32)
    variance = torch.nn.functional.linear(x * x, self._edgeft_mean_row)  # mean(x^2) over the last dim as a Linear
    return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon)).to(dtype)


def _is_llama_rms_norm(mod) -> bool:
    """``mod`` computes LLaMA's RMSNorm (the same forward code: Qwen2, Mistral, Phi-3 and others copy it); Gemma's
    ``1 + weight`` form and the like are left as they are."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def code(f):
        c = getattr(f, "__code__", None)
        return None if c is None else (c.co_code, c.co_consts, c.co_names)

    weight = getattr(mod, "weight", None)
    return (isinstance(weight, torch.nn.Parameter) and weight.dim() == 1 and hasattr(mod, "variance_epsilon")
            and code(getattr(type(mod), "forward", None)) == code(LlamaRMSNorm.forward))


def xnnpack_rewrite(recipe) -> dict:
    """Rewrite the static-cache recipe's model so each decoder layer lowers as one XNNPACK partition.

    Left as transformers writes them, three things fall outside the delegate and cut every layer into about five
    partitions: RMSNorm's ``mean`` (XNNPACK reduces only spatial dims of 4-D tensors), SDPA's decomposition
    (``expand`` of 5-D ``repeat_kv``, ``_safe_softmax``'s ``where``/``any``) and ``matmul``'s broadcast ``expand``.
    This swaps in :func:`_bmm_attention` with an additive mask built once, and RMSNorm with its mean of squares as
    a Linear by a constant 1/H row; the math is the same (parity is checked as before). What remains outside the
    delegate per layer is the KV-cache write (``index_put`` on the mutable cache buffers)."""
    import types

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(XNNPACK_ATTENTION, _bmm_attention)
    AttentionMaskInterface.register(XNNPACK_ATTENTION, _additive_causal_mask)
    hf = recipe.model.model
    hf.config._attn_implementation = XNNPACK_ATTENTION
    norms = 0
    for mod in hf.modules():
        if _is_llama_rms_norm(mod):
            width = mod.weight.shape[0]
            mod.register_buffer("_edgeft_mean_row", torch.full((1, width), 1.0 / width), persistent=False)
            mod.forward = types.MethodType(_rms_norm_forward, mod)
            norms += 1
    return {"attention": "bmm (grouped heads folded, additive mask)", "rms_norms_as_linear": norms}


def export_decoder_program(model, max_cache_len: int, prefill_chunk: int | None = None, rewrite: bool = True):
    """``torch.export`` of transformers' static-cache recipe (with :func:`xnnpack_rewrite` unless ``rewrite`` is
    False).

    ``prefill_chunk`` set: ``{"forward": one token, "prefill": prefill_chunk tokens}``, both at static
    shapes over the same cache buffers. ``None``: one ``ExportedProgram`` with a dynamic sequence length."""
    import torch

    from edgeft.exporters.torchscript import static_cache_recipe

    recipe = static_cache_recipe(model, max_cache_len, "executorch export")
    if rewrite:
        xnnpack_rewrite(recipe)

    def one(n: int, **kw):
        with torch.no_grad():
            return recipe.export(input_ids=torch.arange(3, 3 + n, dtype=torch.long)[None],
                                 cache_position=torch.arange(n, dtype=torch.long), strict=True, **kw)

    if prefill_chunk is not None:
        return {"forward": one(1), "prefill": one(int(prefill_chunk))}
    seq = torch.export.Dim("seq_len", min=1, max=max_cache_len)
    return one(min(8, max_cache_len), dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}})


def _export_decoder(model_dir: Path, stage: Path, opts: dict, tolerance: float, sample_ids, quality_ids) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.metrics.lm import export_quality_windows, quality_vs_reference
    from edgeft.runtime.executorch import ExecuTorchLM

    L = int(opts["max_cache_len"])
    static = opts["shapes"] == "static"
    C = int(opts["prefill_chunk"]) if static else None
    if static and C >= L:
        raise ConfigError(f"executorch option prefill_chunk={C} must be < max_cache_len={L}")
    if not static and L < 9:
        raise ConfigError(f"executorch option max_cache_len={L}: use at least 9")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    quant = quantize_model(model, opts["quantization"], int(opts["group_size"]), opts["embedding"], opts["lm_head"],
                           opts["int8_linears"])
    _clear_padding_idx(model)
    t_export = time.perf_counter()
    buf, lowered = lower(export_decoder_program(model, L, C, rewrite=bool(opts["xnnpack_rewrite"])))
    t_export = time.perf_counter() - t_export
    del model
    if static:
        meta = {"kind": "causal-lm", "max_cache_len": L, "shapes": "static", "prefill_chunk": C,
                "methods": ["forward", "prefill"],
                "inputs": {"forward": ["input_ids [1, 1] int64", "cache_position [1] int64"],
                           "prefill": [f"input_ids [1, {C}] int64", f"cache_position [{C}] int64"]},
                "outputs": {"forward": ["logits [1, 1, vocab]"], "prefill": [f"logits [1, {C}, vocab]"]},
                "shared_mutable_buffers": "KV cache (forward and prefill)"}
    else:
        meta = {"kind": "causal-lm", "max_cache_len": L, "shapes": "dynamic", "methods": ["forward"],
                "inputs": ["input_ids [1, n] int64", "cache_position [n] int64"],
                "outputs": ["logits [1, n, vocab]"]}
    _write_program(stage, buf, meta, opts, quant, lowered)
    total = time.perf_counter() - t0
    lm = ExecuTorchLM(stage, threads=2)
    vocab = int(json.loads((model_dir / "config.json").read_text()).get("vocab_size", 200))
    ids = list(sample_ids) if sample_ids is not None else [100 + i for i in range(16)]
    ids = [int(t) % vocab for t in ids][: L]
    if len(ids) < 2:
        raise UnsupportedError(f"executorch export parity needs at least 2 sample tokens, got {len(ids)}")
    quantized = opts["quantization"] != "none"
    parity = cached_decoder_parity(model_dir, lm, ids, int(opts["decode_steps"]), tolerance, quantized,
                                   "executorch export")
    wins = [w[:L] for w in export_quality_windows(ids if sample_ids is not None else None, quality_ids)]
    quality = quality_vs_reference(model_dir, lm, wins, f"executorch export ({opts['quantization']})",
                                   float(opts["min_top1_agreement"]) if quantized else 0.0,
                                   float(opts["max_ppl_increase_pct"]),
                                   max_abs_logit_diff=None if quantized else tolerance)
    return {"kind": "causal-lm", "max_cache_len": L, "shapes": opts["shapes"], "prefill_chunk": C,
            "xnnpack_rewrite": bool(opts["xnnpack_rewrite"]),
            "export_seconds": total, "export_and_lower_seconds": t_export,
            "parity": parity, "max_abs_diff": parity["max_abs_diff"], "top1_agreement": quality["top1_agreement"],
            "quality": quality, "threads": lm.threads, "threads_source": lm.threads_source}


# --------------------------------------------------------------------------- classifier


def _export_classifier(model_dir: Path, stage: Path, opts: dict, tolerance: float, sample_texts, seq: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.exporters.torchscript import DEFAULT_TEXTS
    from edgeft.runtime.executorch import ExecuTorchClassifier

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    t0 = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    max_pos = getattr(model.config, "max_position_embeddings", seq)
    if seq > max_pos:
        raise UnsupportedError(f"executorch export: static seq {seq} exceeds the model's max_position_embeddings "
                               f"{max_pos}; set export.static_shapes.seq (or the seq_len option) to <= {max_pos}")
    quant = quantize_model(model, opts["quantization"], int(opts["group_size"]), opts["embedding"],
                           int8_linears=opts["int8_linears"])
    _clear_padding_idx(model)

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    texts = list(sample_texts or DEFAULT_TEXTS)
    ex = tok([texts[0]], truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        exported = torch.export.export(Classifier().eval(), (ex["input_ids"], ex["attention_mask"]), strict=True)
    buf, lowered = lower(exported)
    del model
    meta = {"kind": "classifier", "seq_len": seq, "batch": 1, "methods": ["forward"],
            "inputs": [f"input_ids [1, {seq}] int64", f"attention_mask [1, {seq}] int64"],
            "outputs": ["logits [1, labels]"]}
    _write_program(stage, buf, meta, opts, quant, lowered)
    total = time.perf_counter() - t0
    runner = ExecuTorchClassifier(stage, threads=2)
    ref_model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    from edgeft.exporters.onnx_encoder import module_logits

    ref = module_logits(ref_model, tok, texts, max_length=seq)
    got = runner.logits(tok, texts)
    diff = float(np.max(np.abs(ref - got)))
    agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    parity = {"texts": len(texts), "max_abs_diff": diff, "label_agreement": agree}
    if opts["quantization"] == "none":
        checks = check_outputs("executorch export", {"logits": ref}, {"logits": got}, tolerance)
        parity.update({"tolerance": tolerance, "checks": [c.to_dict() for c in checks]})
    elif agree < float(opts["min_top1_agreement"]):
        raise ParityError(f"executorch export: label agreement {agree:.3f} with the fp32 model on {len(texts)} texts "
                          f"< min_top1_agreement {opts['min_top1_agreement']}; max |logit diff| {diff:.3g}")
    return {"kind": "classifier", "seq_len": seq, "export_seconds": total,
            "parity": parity, "max_abs_diff": diff, "top1_agreement": agree, "threads": runner.threads,
            "threads_source": runner.threads_source}


# --------------------------------------------------------------------------- common


def _write_program(stage: Path, buf: bytes, meta: dict, opts: dict, quant: dict, lowered: dict) -> None:
    """Write ``model.pte`` and ``executorch.json`` (what the runtime needs to drive it) into the staging folder."""
    import torch

    from edgeft.runtime.executorch import META_FILE, MODEL_FILE

    (stage / MODEL_FILE).write_bytes(buf)
    meta = dict(meta, quantization=opts["quantization"], quantized=quant, delegate="XnnpackBackend", **lowered,
                versions=_versions(), torch=torch.__version__)
    (stage / META_FILE).write_text(json.dumps(meta, indent=2))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("executorch", "torchao", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@EXPORTERS.register("pte", options=ExecuTorchOptions)
def export_executorch(model_dir: Path, out_dir: Path, opset: int = 18, with_past: bool = True,
                      tolerance: float = 2e-3, sample_ids: Sequence[int] | None = None,
                      quality_ids: Sequence[Sequence[int]] | None = None, sample_texts: Sequence[str] | None = None,
                      static_shapes=None, **options) -> dict:
    """Export ``model_dir`` (HF folder) to ``out_dir/model.pte`` (+ tokenizer/config, executorch.json,
    export_report.json) and check it against PyTorch. ``opset``/``with_past`` are ONNX fields, unused."""
    from edgeft.artifacts import model_kind, size_of
    from edgeft.exporters.torchscript import copy_side_files

    opts = ExecuTorchOptions.of(**options).model_dump()
    if opts["quantization"] == "int8w":
        raise UnsupportedError(WEIGHT_ONLY_INT8)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir}: not an HF model folder (no config.json); run the merge stage first "
                               "or point at a transformers model folder")
    kind = model_kind(model_dir)
    _exir()  # a missing install fails here, before any work
    stage = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        copy_side_files(model_dir, stage)
        if kind == "causal-lm":
            if static_shapes is not None:
                raise UnsupportedError("export.static_shapes applies to encoders/classifiers; the executorch decoder "
                                       "takes any prompt length up to max_cache_len")
            body = _export_decoder(model_dir, stage, opts, tolerance, sample_ids, quality_ids)
        elif kind == "classifier":
            if static_shapes is not None and static_shapes.batch != 1:
                raise UnsupportedError(f"executorch classifier export is batch 1; export.static_shapes.batch is "
                                       f"{static_shapes.batch}")
            seq = int(static_shapes.seq if static_shapes is not None else opts["seq_len"])
            body = _export_classifier(model_dir, stage, opts, tolerance, sample_texts, seq)
        else:
            raise UnsupportedError(f"executorch export covers causal LMs and *ForSequenceClassification models; "
                                   f"{model_dir} is a {kind}")
        from edgeft.runtime.executorch import MODEL_FILE

        report = {"format": "pte", "runtime": "executorch", "delegate": "XnnpackBackend",
                  "quantization": opts["quantization"],
                  "group_size": int(opts["group_size"]) if opts["quantization"] == "8da4w" else None,
                  "embedding": opts["embedding"] if opts["quantization"] != "none" else "fp32",
                  "file": MODEL_FILE, "size_bytes": size_of(stage, "pte"), **body,
                  "executorch": json.loads((stage / "executorch.json").read_text())}
        (stage / "export_report.json").write_text(json.dumps(report, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("executorch export %s (%s): %.1f MB in %.1f s, max |diff| %.3g, top-1 agreement %.3f", out_dir,
             opts["quantization"], report["size_bytes"] / 2**20, report["export_seconds"], report["max_abs_diff"],
             report["top1_agreement"])
    return report


def export_preset(model_dir: Path, out_dir: Path, preset, tolerance: float = 2e-3, sample_ids=None,
                  quality_ids=None, sample_texts=None, static_shapes=None) -> dict:
    """Export with a loaded ``pte`` :class:`~edgeft.config.schema.ExportPreset` (options in ``preset.options``)."""
    return export_executorch(model_dir, out_dir, tolerance=tolerance, sample_ids=sample_ids, quality_ids=quality_ids,
                             sample_texts=sample_texts, static_shapes=static_shapes, **dict(preset.options or {}))
