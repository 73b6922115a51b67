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

import numpy as np
from pydantic import Field

from edgeft.artifacts import size_of
from edgeft.config.options import Options
from edgeft.errors import ModelSourceError, ParityError, UnsupportedError
from edgeft.exporters.registry import EXPORTERS

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


def quality_vs_reference(model_dir: Path, lm, windows: Sequence[np.ndarray], what: str,
                         min_top1_agreement: float, max_ppl_increase_pct: float,
                         max_abs_logit_diff: float | None = None) -> dict:
    """Score ``lm`` against the fp32 PyTorch model in ``model_dir`` on ``windows``; raise ParityError past a limit.

    Reports perplexity of both, its change in percent, top-1 agreement and mean KL per token, and
    max |logit diff| (gated only when ``max_abs_logit_diff`` is given: unquantized exports).
    """
    from edgeft.runtime.quality import compare, perplexity
    from edgeft.runtime.lm import TorchLM

    ref = TorchLM(Path(model_dir))
    ref_logits = [ref.logits(w) for w in windows]
    cand_logits = [lm.logits(w) for w in windows]
    diff = max(float(np.max(np.abs(r - c))) for r, c in zip(ref_logits, cand_logits))

    class _Cached:  # perplexity/compare call .logits(w) once per window, in order
        def __init__(self, rows):
            self.rows = iter(rows)

        def logits(self, _w):
            return next(self.rows)

    ppl_ref = perplexity(_Cached(ref_logits), list(windows))
    ppl = perplexity(_Cached(cand_logits), list(windows))
    agree = compare(ref_logits, _Cached(cand_logits), list(windows))
    out = {"n_windows": len(windows), "n_tokens": int(sum(len(w) for w in windows)),
           "perplexity_reference": ppl_ref, "perplexity": ppl,
           "ppl_increase_pct": 100.0 * (ppl / ppl_ref - 1.0), **agree, "max_abs_logit_diff": diff,
           "min_top1_agreement": min_top1_agreement, "max_ppl_increase_pct": max_ppl_increase_pct}
    failures = []
    if agree["top1_agreement"] < min_top1_agreement:
        failures.append(f"top-1 agreement {agree['top1_agreement']:.3f} < {min_top1_agreement}")
    if out["ppl_increase_pct"] > max_ppl_increase_pct:
        failures.append(f"perplexity {ppl:.3f} vs {ppl_ref:.3f} (+{out['ppl_increase_pct']:.1f}% > "
                        f"{max_ppl_increase_pct}%)")
    if max_abs_logit_diff is not None and diff > max_abs_logit_diff:
        failures.append(f"max |logit diff| {diff:.3g} > {max_abs_logit_diff:g}")
    line = (f"{what}: ppl {ppl:.3f} vs fp32 {ppl_ref:.3f} ({out['ppl_increase_pct']:+.1f}%), top-1 agreement "
            f"{agree['top1_agreement']:.3f}, KL {agree['kl']:.4f}, max |logit diff| {diff:.3g}")
    log.info(line)
    out["passed"] = not failures
    if failures:
        raise ParityError(f"{line}: FAIL " + "; ".join(failures) + " (use a higher-precision preset, e.g. "
                          "lm_head: int8 / mixed_layers: true, or loosen the preset's limits)")
    return out


def export_quality_windows(sample_ids, quality_ids) -> list[np.ndarray]:
    """The windows an export is scored on: the held-out ``quality_ids``, else the one parity sample."""
    if quality_ids:
        return [np.asarray(w, np.int64) for w in quality_ids]
    ids = list(sample_ids) if sample_ids is not None else list(range(100, 164))
    return [np.asarray(ids, np.int64)]


@EXPORTERS.register("genai", options=GenaiOptions)
def export_genai(model_dir: Path, out_dir: Path, opset: int = 18, with_past: bool = True, tolerance: float = 2e-3,
                 sample_ids: Sequence[int] | None = None, quality_ids: Sequence[Sequence[int]] | None = None,
                 opts: GenaiOptions | None = None, **options) -> dict:
    """Build ``out_dir`` (model.onnx + genai_config.json + tokenizer) from the HF folder ``model_dir``."""
    from edgeft.runtime.lm import OrtLM

    o = GenaiOptions.of(opts, **options)
    if not with_past:
        raise UnsupportedError("genai export always builds the KV-cache graph: set with_past: true in the preset")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir}: not an HF model folder (no config.json); run the merge stage first")
    extra = builder_options(o)
    t0 = time.perf_counter()
    _build(model_dir, out_dir, o.precision, extra)
    seconds = time.perf_counter() - t0
    if not (out_dir / "model.onnx").is_file():
        raise ModelSourceError(f"{out_dir}: the model builder wrote no model.onnx")
    lm = OrtLM(out_dir, threads=2)
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
    report = {"format": "genai", "builder_options": extra, **o.model_dump(), "export_seconds": seconds,
              "quality": quality, "ops": ops, "size_bytes": size_of(out_dir, "genai")}
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report
