"""GPTQ through GPTQModel (ModelCloud) on a CUDA GPU: a 4-bit GPTQ checkpoint of the merged model.

Install with ``pip install 'edgeft[gptq]'`` on a machine with CUDA. The call path is GPTQModel's
documented one: ``QuantizeConfig(bits, group_size, desc_act, sym, damp_percent)``,
``GPTQModel.load(model_dir, quant_config)``, ``model.quantize(calibration, batch_size)``,
``model.save(out_dir)``; the calibration rows are the recipe's calibration windows (training
text, disjoint from the evaluation text) decoded back to strings. The result is an HF folder with a GPTQ
``quantization_config`` that transformers (with gptqmodel installed) and GPTQModel load.

Without gptqmodel or without CUDA the scheme refuses, naming what is missing and the CPU
alternatives: ``int4-gptq`` (edgeft's own GPTQ on the ONNX export), ``int4-rtn``, ``int4-hqq``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from edgeft.config.options import Options
from edgeft.errors import UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)


class GptqModelOptions(Options):
    """Options of gptqmodel."""

    owner: ClassVar[str] = "quantize scheme gptqmodel"
    group_size: int = Field(128, ge=-1, description="weights per quantization group (-1: one group per output "
                                                    "channel)")
    desc_act: bool = Field(False, description="activation order: quantize columns by decreasing Hessian diagonal")
    sym: bool = Field(True, description="symmetric quantization (no zero point)")
    damp_percent: float = Field(0.01, ge=0, lt=1, description="dampening added to the Hessian diagonal, fraction "
                                                              "of its mean")
    batch_size: int = Field(1, ge=1, description="calibration batch size on the GPU")


def _alternatives() -> str:
    alts = [n for n in ("int4-gptq", "int4-rtn", "int4-hqq") if n in SCHEMES]
    return ", ".join(alts)


def check_available() -> None:
    """Raise :class:`UnsupportedError` unless gptqmodel imports and a CUDA device is visible."""
    missing = []
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        missing.append("the gptqmodel package (pip install 'edgeft[gptq]')")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a core dependency
        cuda = False
    if not cuda:
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if missing:
        raise UnsupportedError(f"quantize scheme gptqmodel needs {' and '.join(missing)}; on this machine use "
                               f"{_alternatives()} instead (int4-gptq is GPTQ on the ONNX export, CPU only)")


def apply(in_dir: Path, out_dir: Path, calibration=(), opts: GptqModelOptions | None = None, **options) -> dict:
    o = GptqModelOptions.of(opts, **options)
    check_available()
    from gptqmodel import GPTQModel, QuantizeConfig

    from transformers import AutoTokenizer

    # GPTQModel's documented calibration input is a list of texts (it tokenizes them with the model's
    # tokenizer), so the token windows are decoded back to text.
    tok = AutoTokenizer.from_pretrained(str(in_dir))
    rows = [tok.decode(list(map(int, w))) for w in calibration]
    if not rows:
        from edgeft.errors import ConfigError

        raise ConfigError("quantize scheme gptqmodel needs calibration windows (token ids of training text)")
    qcfg = QuantizeConfig(bits=4, group_size=o.group_size, desc_act=o.desc_act, sym=o.sym,
                          damp_percent=o.damp_percent)
    model = GPTQModel.load(str(in_dir), qcfg)
    model.quantize(rows, batch_size=o.batch_size)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.gptq-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    for f in tmp.iterdir():  # weights + config with the GPTQ quantization_config replace the copied fp32 ones
        f.replace(out_dir / f.name)
    tmp.rmdir()
    import gptqmodel

    return {"bits": 4, "group_size": o.group_size, "desc_act": o.desc_act, "sym": o.sym,
            "damp_percent": o.damp_percent, "calibration_windows": len(rows),
            "gptqmodel": getattr(gptqmodel, "__version__", "unknown")}


SCHEMES.register("gptqmodel")(Scheme(
    "gptqmodel", "GPTQ 4-bit via GPTQModel (CUDA); HF checkpoint", "int4", None, apply, GptqModelOptions,
    needs_calibration=True, input_format="pytorch", output_format="pytorch"))
