"""edgeft: fine-tune -> merge -> export -> quantize -> validate -> package models for edge devices.

The public API is imported lazily so ``import edgeft`` (and ``edgeft --help``) stays instant:
torch, transformers and onnxruntime load only when a stage runs.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# edgeft never downloads weights or data from a hub: make every HF library fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# edgeft's models are PyTorch: transformers must not pick up tensorflow (installed by the litert-lm extra, whose
# converter imports it) and its Keras 3, which transformers refuses.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_TORCH", "1")

__all__ = ["run", "finetune", "merge", "export", "quantize", "validate", "package", "verify", "load_recipe",
           "load_device", "resolve_model", "generate", "serve", "monitor"]

_LAZY = {
    "run": ("edgeft.pipeline.run", "run"),
    "finetune": ("edgeft.finetune", "finetune"),
    "merge": ("edgeft.merge", "merge"),
    "export": ("edgeft.exporters", "export"),
    "quantize": ("edgeft.quantize", "quantize"),
    "validate": ("edgeft.validate", "validate"),
    "package": ("edgeft.release", "package"),
    "verify": ("edgeft.release", "verify"),
    "load_recipe": ("edgeft.recipe", "load_recipe"),
    "load_device": ("edgeft.config.loader", "load_device"),
    "resolve_model": ("edgeft.models", "resolve_model"),
    "generate": ("edgeft.chat", "generate"),
    "serve": ("edgeft.serve", "serve"),
    "monitor": ("edgeft.monitor", "monitor"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgeft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
