"""PyTorch dynamic int8 (``torch.ao.quantization.quantize_dynamic``) on nn.Linear, saved as TorchScript.

Weights of every ``nn.Linear`` become int8 (per output channel by default); activations are
quantized per call from their observed range (``quantized::linear_dynamic``: fbgemm/x86 on
Intel/AMD, qnnpack on ARM). The embedding stays fp32; the LM head too unless ``keep_fp32`` is
emptied. The quantized model is then traced with the TorchScript decoder exporter (static KV
cache, prefill + decode methods) and the trace is checked against the eager quantized model.

PyTorch 2.13 warns that quantized tensor types (``torch.qint8``), which this path uses, are
deprecated in favour of torchao; the scheme works with the pinned version and says so if a later
release drops them (quantize_dynamic then fails to import or to run, and the error is raised).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)

Engine = Literal["auto", "x86", "fbgemm", "qnnpack", "onednn"]


class TorchDynamicOptions(Options):
    """Options of torch-dynamic-int8."""

    owner: ClassVar[str] = "quantize scheme torch-dynamic-int8"
    per_channel: bool = Field(True, description="per-output-channel weight scales (else one scale per tensor)")
    keep_fp32: list[str] = Field(default_factory=lambda: ["lm_head"],
                                 description="module names (or name suffixes) left in fp32")
    engine: Engine = Field("auto", description="quantized kernels: auto (x86 here, qnnpack on ARM), x86, fbgemm, "
                                               "qnnpack, onednn")
    max_cache_len: int = Field(512, ge=1, description="KV cache slots of the TorchScript decoder (prompt + generated "
                                                      "tokens)")
    tolerance: float = Field(2e-3, gt=0, description="max |diff| TorchScript trace vs the eager quantized model "
                                                     "(logits and KV)")


def _kept(name: str, keep) -> bool:
    return any(name == k or name.endswith("." + k) for k in keep)


def quantize_model(model, per_channel: bool = True, keep_fp32=("lm_head",)):
    """``quantize_dynamic`` on every nn.Linear not in ``keep_fp32``; returns (model, quantized names)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _kept(n, keep_fp32)]
    if not names:
        raise ConfigError(f"quantize scheme torch-dynamic-int8: no nn.Linear left to quantize (keep_fp32={list(keep_fp32)})")
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head" in names:
        # the head gets its own int8 copy; the embedding it was tied to stays fp32 for the token lookup
        log.info("torch-dynamic-int8: tied LM head quantized separately from the (fp32) embedding")
    qmodel = quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8, inplace=False)
    return qmodel, names


def apply(in_dir: Path, out_dir: Path, opts: TorchDynamicOptions | None = None, **options) -> dict:
    import platform

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.artifacts import model_kind
    from edgeft.exporters import torchscript as ts

    o = TorchDynamicOptions.of(opts, **options)
    per_channel, keep_fp32, engine, max_cache_len, tolerance = (o.per_channel, o.keep_fp32, o.engine,
                                                                o.max_cache_len, o.tolerance)
    if model_kind(in_dir) != "causal-lm":
        raise UnsupportedError(f"quantize scheme torch-dynamic-int8 exports a decoder LM; {in_dir} is an encoder or "
                               "classifier (use an ONNX scheme on its ONNX export)")
    supported = torch.backends.quantized.supported_engines
    if engine == "auto":
        engine = "qnnpack" if platform.machine().lower() in ("arm64", "aarch64") else "x86"
        engine = engine if engine in supported else next(e for e in supported if e != "none")
    if engine not in supported:
        raise ConfigError(f"quantize scheme torch-dynamic-int8: engine {engine!r} is not in this PyTorch build "
                          f"(supported: {', '.join(supported)})")
    torch.backends.quantized.engine = engine
    model = AutoModelForCausalLM.from_pretrained(str(in_dir), dtype=torch.float32).eval()
    t0 = time.perf_counter()
    qmodel, names = quantize_model(model, per_channel, tuple(keep_fp32))
    q_seconds = time.perf_counter() - t0
    eager = quantize_model(AutoModelForCausalLM.from_pretrained(str(in_dir), dtype=torch.float32).eval(),
                           per_channel, tuple(keep_fp32))[0]  # untouched by tracing, for the parity check
    scripted, meta = ts.trace_decoder(qmodel, max_cache_len)
    meta.update({"quantization": "torch-dynamic-int8", "engine": engine, "per_channel": per_channel})
    meta = ts.save_scripted(scripted, out_dir, meta)
    scripted = torch.jit.load(str(Path(out_dir) / ts.MODEL_FILE))
    ids = np.asarray([list(range(100, 116))], np.int64)
    checks = ts.decoder_parity(eager, scripted, ids, tolerance, stage="torch-dynamic-int8 trace")
    return {"per_channel": per_channel, "keep_fp32": list(keep_fp32), "engine": engine,
            "quantized_linear": len(names), "quantize_dynamic_seconds": q_seconds, "max_cache_len": max_cache_len,
            "trace_parity_max_abs_diff": max(c["max_abs_diff"] for c in checks), "trace_tolerance": tolerance}


SCHEMES.register("torch-dynamic-int8")(Scheme(
    "torch-dynamic-int8", "PyTorch dynamic int8 on nn.Linear (torch.ao quantize_dynamic), saved as TorchScript",
    "int8", "dynamic", apply, TorchDynamicOptions, input_format="pytorch", output_format="torchscript"))
