"""Fine-tuning registries: a method decides what is trained, an objective what it learns from.

Each method/objective lives in its own module under ``methods/`` or ``objectives/`` and registers
itself here by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgeft.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    load_model: Callable[..., Any]  # (model_path, cfg) -> transformers model ready for the peft config
    peft_config: Callable[..., Any]  # (cfg) -> peft config or None (full weights)
    mergeable: bool
    quantized_base: bool  # base is loaded quantized: merge must reload it un-quantized


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    train: Callable[..., dict]  # (model, tokenizer, peft_config, train, eval, cfg, out_dir, work_dir, system_prompt)


METHODS: Registry[Method] = Registry("fine-tuning method")
OBJECTIVES: Registry[Objective] = Registry("fine-tuning objective")
