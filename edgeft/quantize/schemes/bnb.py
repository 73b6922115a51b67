"""bitsandbytes checkpoints: NF4/FP4 4-bit (``bnb-nf4``) and LLM.int8 (``bnb-int8``).

The merged model is loaded through transformers with a ``BitsAndBytesConfig`` (the weights are
quantized as they load) and written with ``save_pretrained``: ``config.json`` carries the
``quantization_config``, so ``AutoModelForCausalLM.from_pretrained(out_dir)`` gives the quantized
model back with no extra arguments. bitsandbytes has a CPU backend (slow, but it runs here) and
CUDA kernels; the checkpoint is the same for both.

Modules in ``keep_fp32`` (default: the LM head, which is tied to the embedding in SmolLM2 and
sets the logits directly) are not quantized; embeddings and norms never are.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import UnsupportedError, optional_import
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)

_KEEP_HELP = "module names left unquantized"


class Nf4Options(Options):
    """Options of bnb-nf4."""

    owner: ClassVar[str] = "quantize scheme bnb-nf4"
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (normal float) or fp4")
    double_quant: bool = Field(True, description="quantize the per-block scales too (saves ~0.4 bit per weight)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the 4-bit weights are dequantized to for the matmul: float32, bfloat16, float16")
    keep_fp32: list[str] = Field(default_factory=lambda: ["lm_head"], description=_KEEP_HELP)


class Int8Options(Options):
    """Options of bnb-int8."""

    owner: ClassVar[str] = "quantize scheme bnb-int8"
    threshold: float = Field(6.0, gt=0, description="LLM.int8 outlier threshold: activation columns above it run "
                                                    "in 16-bit")
    keep_fp32: list[str] = Field(default_factory=lambda: ["lm_head"], description=_KEEP_HELP)


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _save(in_dir: Path, out_dir: Path, qconfig) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.artifacts import model_kind

    optional_import("bitsandbytes", "bnb schemes need bitsandbytes: pip install bitsandbytes")
    if model_kind(in_dir) != "causal-lm":
        raise UnsupportedError(f"bnb schemes quantize causal LMs here; {in_dir} is an encoder or classifier "
                               "(use an ONNX scheme on its ONNX export)")
    model = AutoModelForCausalLM.from_pretrained(str(in_dir), quantization_config=qconfig, device_map="cpu",
                                                 dtype=torch.float32)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.bnb-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for f in tmp.iterdir():  # weights and the config with quantization_config replace the copied fp32 ones
        f.replace(out_dir / f.name)
    tmp.rmdir()
    import bitsandbytes as bnb

    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    n8 = sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    return {"quantized_linear": n4 + n8, "bitsandbytes": bnb.__version__}


def apply_nf4(in_dir: Path, out_dir: Path, opts: Nf4Options | None = None, **options) -> dict:
    from transformers import BitsAndBytesConfig

    o = Nf4Options.of(opts, **options)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=o.quant_type,
                           bnb_4bit_use_double_quant=o.double_quant,
                           bnb_4bit_compute_dtype=_dtype(o.compute_dtype), llm_int8_skip_modules=list(o.keep_fp32))
    done = _save(in_dir, out_dir, q)
    return {**done, **o.model_dump()}


def apply_int8(in_dir: Path, out_dir: Path, opts: Int8Options | None = None, **options) -> dict:
    from transformers import BitsAndBytesConfig

    o = Int8Options.of(opts, **options)
    q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=o.threshold, llm_int8_skip_modules=list(o.keep_fp32))
    done = _save(in_dir, out_dir, q)
    return {**done, **o.model_dump()}


SCHEMES.register("bnb-nf4")(Scheme(
    "bnb-nf4", "bitsandbytes 4-bit NF4 checkpoint (transformers from_pretrained loads it)", "int4", None, apply_nf4,
    Nf4Options, input_format="pytorch", output_format="pytorch"))
SCHEMES.register("bnb-int8")(Scheme(
    "bnb-int8", "bitsandbytes LLM.int8 checkpoint (int8 weights, 16-bit outlier columns)", "int8", "dynamic",
    apply_int8, Int8Options, input_format="pytorch", output_format="pytorch"))
