"""Scheme registry: name -> Scheme(apply, precision, int8_mode, description, options_model).

Each scheme declares its options as an :class:`~edgeft.config.options.Options` model next to its
code; the config loader checks a recipe's ``quantize.N.options`` against it when the recipe loads,
and :func:`edgeft.quantize.quantize` hands ``apply`` the validated instance (``opts=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from edgeft.config.options import Options, option_table, options_from_table
from edgeft.registry import Registry


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    precision: str  # weight precision of the result: int8 | int4
    int8_mode: str | None  # dynamic | static | full-integer | weight-only (None for int4)
    # (in, out, [calibration=[token-id windows],] opts=<options_model instance>) -> dict of what was done
    apply: Callable[..., dict]
    # The typed options (defaults and descriptions live there). A {option: (default, description)}
    # table is accepted too and becomes a model that checks names only.
    options_model: Union[type[Options], dict] = Options
    needs_calibration: bool = False  # apply() then also gets calibration=[token-id windows]
    needs_adapter: bool = False  # apply() then also gets adapter=<the fine-tune's PEFT adapter folder>
    uses_adapter: bool = False  # apply() gets adapter=<folder> when the fine-tune wrote one (else adapter=None)
    # Called by quantize() with the finished report (quality on held-out text included, when measured) and the
    # output folder, before the report is written: a scheme may add to it what the scores mean for its choices.
    on_quality: Optional[Callable[[dict, Path], None]] = None
    # What apply() reads and writes. "onnx": (in_onnx file, out_onnx file). "pytorch" input: (HF model
    # folder, output folder) -- the merged model, before export; the output folder already holds the
    # tokenizer and config. output_format "pytorch" (an HF folder from_pretrained loads) or "torchscript".
    input_format: str = "onnx"  # onnx | pytorch
    output_format: str = "onnx"  # onnx | pytorch | torchscript

    def __post_init__(self) -> None:
        if isinstance(self.options_model, dict):
            model = options_from_table(f"{self.name}-options", self.options_model)
            object.__setattr__(self, "options_model", model)

    @property
    def options(self) -> dict[str, tuple[Any, str]]:
        """``{option: (default, description)}``, read from the options model."""
        return option_table(self.options_model)


SCHEMES: Registry[Scheme] = Registry("quantization scheme")
