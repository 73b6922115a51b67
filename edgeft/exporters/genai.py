"""onnxruntime-genai export: the model builder's decoder graph (GroupQueryAttention, fused rotary,
MatMulNBits int4/int8) plus ``genai_config.json`` and the tokenizer, checked against the fp32 model.

The builder quantizes while it builds (``precision``: int4, int8 or fp32), so the check is a
quality check rather than an exact parity: top-1 agreement, KL and perplexity of the exported graph
vs the merged PyTorch model on held-out windows, failing past the preset's limits. An fp32 build
is also held to the export ``tolerance`` on max |logit diff|.

Options (``options:`` of an export preset, or keyword arguments):

- ``precision``: int4 (default) | int8 | fp32.
- ``accuracy_level``: MatMulNBits activation precision on CPU: 0 (ORT's default), 1 fp32, 4 int8.
- ``block_size``: weights per quantization block (16-256, default 32).
- ``algo``: default | rtn | k_quant (builder's weight-only algorithms).
- ``lm_head``: same (quantized like the body, default) | int8 | fp32.
- ``embeddings``: auto | fp32 | int4. With ``lm_head: same`` a tied embedding shares the LM head's
  quantized matrix (GatherBlockQuantized); otherwise it is its own table, fp32 by default (a decode
  step reads one row of it, so its precision costs size, not speed) or int4 (the only width the
  builder's quantized Gather takes).
- ``mixed_layers``: also keep the builder's "most sensitive" MatMuls (llama.cpp's mixed strategy:
  first/last eighth of layers and every third layer's qkv/v/down projections) in int8.
- ``min_top1_agreement`` / ``max_ppl_increase_pct``: the quality gates.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal, Sequence

from pydantic import Field

from edgeft.artifacts import require_hf_folder, size_of
from edgeft.config.options import Options
from edgeft.errors import ModelSourceError, UnsupportedError
from edgeft.exporters.registry import EXPORTERS
from edgeft.metrics.lm import export_quality_windows, quality_vs_reference

log = logging.getLogger(__name__)


class GenaiOptions(Options):
    """Options of genai presets (the onnxruntime-genai model builder and the quality gates)."""

    owner: ClassVar[str] = "genai export"
    precision: Literal["int4", "int8", "fp32"] = Field("int4", description="int4 | int8 | fp32")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(4, description="MatMulNBits activation precision: 0 default, "
                                                                  "1 fp32, 4 int8")
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="weights per quantization block (16, 32, 64, "
                                                                      "128, 256)")
    algo: Literal["default", "rtn", "k_quant"] = Field("default", description="default | rtn | k_quant")
    lm_head: Literal["same", "int8", "fp32"] = Field("same", description="same (as the body) | int8 | fp32; the tied "
                                                                         "embedding follows it")
    embeddings: Literal["auto", "fp32", "int4"] = Field(
        "auto", description="auto (shared with a same-precision LM head, else fp32) | fp32 | int4")
    mixed_layers: bool = Field(False, description="keep the quantization-sensitive MatMuls in int8")
    min_top1_agreement: float = Field(0.80, ge=0, description="fail below this top-1 agreement with the fp32 model")
    max_ppl_increase_pct: float = Field(25.0, description="fail when perplexity rises more than this vs the fp32 "
                                                          "model")

    @property
    def int8_mode(self) -> str | None:
        return "weight-only" if self.precision == "int8" else None


# Classes the builder imports at module level for architectures that transformers 4.57 does not
# ship yet. The builder only touches them when exporting those architectures, so a placeholder
# lets it import; exporting such a model still fails inside the builder with its own message.
# (Its Gemma 4 classes are imported inside functions, from transformers.models.gemma4*, so need
# none.) tests/finetune/test_library_patches.py checks the list against the builder's imports.
_FUTURE_TRANSFORMERS_CLASSES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")


def _import_builder():
    try:
        import transformers

        for name in _FUTURE_TRANSFORMERS_CLASSES:
            if not hasattr(transformers, name):
                setattr(transformers, name, type(name, (), {"__module__": "edgeft.exporters.genai"}))
        from onnxruntime_genai.models import builder
    except ImportError as e:
        raise UnsupportedError(f"genai export needs onnxruntime-genai's model builder: pip install onnxruntime-genai "
                               f"({e})") from e
    return builder


def builder_options(o: GenaiOptions) -> list[str]:
    """The builder's KEY=VALUE extra options for these settings."""
    precision, accuracy_level, block_size, algo = o.precision, o.accuracy_level, o.block_size, o.algo
    lm_head, mixed_layers, embeddings = o.lm_head, o.mixed_layers, o.embeddings
    opts = ["hf_remote=false", "hf_token=false"]
    if precision == "fp32":
        return opts
    opts += [f"accuracy_level={accuracy_level}", f"block_size={block_size}", f"algo_config={algo}"]
    mixed = []
    if lm_head == "int8" and precision == "int4":
        mixed.append("last_matmul:int8")
    if mixed_layers and precision == "int4":
        mixed.append("mixed_layers:int8")
    if mixed:
        opts.append("matmul_mixed_precision=" + ",".join(mixed))
    if lm_head == "fp32":
        opts.append("nodes_to_exclude=/lm_head/MatMul")
    if lm_head != "same" or embeddings != "auto":
        # the builder's shared table is GatherBlockQuantized, int4 only: unshare for any other head
        opts.append("shared_embeddings=false")
        if embeddings == "int4":
            opts.append("op_types_to_quantize=MatMul/Gather")
    return opts


def stamp_opset(path: Path, opset: int) -> dict:
    """Declare the default-domain ``opset`` (the preset's) in the builder's graph, which it stamps 22
    whatever its ops need. Why not ``onnx.version_converter``: it stops at the ORT contrib ops the builder
    puts in the default domain (SimplifiedLayerNormalization). Every default-domain op with an ONNX
    schema must exist at ``opset``; the ops the builder uses changed since only by added tensor types
    (int4, bfloat16, float8), and loading the graph in ONNX Runtime, then the export's parity check,
    verify each node against the older schema. Only the header changes (external weights untouched)."""
    import onnx
    from onnx import defs

    model = onnx.load(str(path), load_external_data=False)
    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    declared = int(entry.version) if entry is not None else None
    if entry is None or declared <= opset:
        return {"declared_by_builder": declared, "stamped": declared}
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and defs.has(node.op_type):
            try:
                defs.get_schema(node.op_type, opset)
            except defs.SchemaError:
                raise UnsupportedError(f"{path}: node {node.name} ({node.op_type}) has no ONNX schema at opset "
                                       f"{opset}; set the export preset's opset to at least {declared}") from None
    entry.version = opset
    onnx.save(model, str(path))
    return {"declared_by_builder": declared, "stamped": opset}


def _build(model_dir: Path, out_dir: Path, precision: str, extra: list[str]) -> str:
    """Run the model builder; return its captured console output (it prints per tensor)."""
    builder = _import_builder()
    buf = io.StringIO()
    prev = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    quant_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quant_logger.level
    quant_logger.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeft-genai-cache-") as cache, \
                contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            kw = builder.parse_extra_options(None, str(model_dir), str(out_dir), precision, "cpu", cache, extra)
            cfg = kw["hf_details"]["hf_config"]
            # The builder reads transformers 5's rope_parameters; 4.x configs of un-scaled RoPE models
            # say rope_scaling=None. Give it the equivalent "default" entry.
            if getattr(cfg, "rope_scaling", None) is None and hasattr(cfg, "rope_theta"):
                cfg.rope_scaling = {"rope_type": "default", "rope_theta": cfg.rope_theta}
            builder.create_model(None, str(model_dir), str(out_dir), precision, "cpu", cache, **kw)
    except Exception as e:
        tail = " | ".join(buf.getvalue().strip().splitlines()[-3:])
        raise ModelSourceError(f"onnxruntime-genai model builder failed on {model_dir}: {e} ({tail})") from e
    finally:
        quant_logger.setLevel(level)
        if prev is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = prev
    return buf.getvalue()


@EXPORTERS.register("genai", options=GenaiOptions)
def export_genai(model_dir: Path, out_dir: Path, opset: int = 18, with_past: bool = True, tolerance: float = 2e-3,
                 sample_ids: Sequence[int] | None = None, quality_ids: Sequence[Sequence[int]] | None = None,
                 opts: GenaiOptions | None = None, **options) -> dict:
    """Build ``out_dir`` (model.onnx + genai_config.json + tokenizer) from the HF folder ``model_dir``."""
    from edgeft.runtime.lm import OrtLM

    o = GenaiOptions.of(opts, **options)
    if not with_past:
        raise UnsupportedError("genai export always builds the KV-cache graph: set with_past: true in the preset")
    model_dir, out_dir = require_hf_folder(model_dir), Path(out_dir)
    extra = builder_options(o)
    t0 = time.perf_counter()
    _build(model_dir, out_dir, o.precision, extra)
    seconds = time.perf_counter() - t0
    if not (out_dir / "model.onnx").is_file():
        raise ModelSourceError(f"{out_dir}: the model builder wrote no model.onnx")
    stamped = stamp_opset(out_dir / "model.onnx", opset)
    lm = OrtLM(out_dir, threads=2)  # ONNX Runtime checks every node against the stamped opset's schemas here
    fp32 = o.precision == "fp32"
    wins = export_quality_windows(sample_ids, quality_ids)
    quality = quality_vs_reference(model_dir, lm, wins, f"genai export ({o.precision})",
                                   o.min_top1_agreement, o.max_ppl_increase_pct,
                                   max_abs_logit_diff=tolerance if fp32 else None)
    import onnx

    graph = onnx.load(str(out_dir / "model.onnx"), load_external_data=False).graph
    ops: dict[str, int] = {}
    for n in graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    report = {"format": "genai", "builder_options": extra, "opset": stamped, **o.model_dump(), "export_seconds": seconds,
              "quality": quality, "ops": ops, "size_bytes": size_of(out_dir, "genai")}
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report
