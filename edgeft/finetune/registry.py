"""Fine-tuning registries: a method decides what is trained, an objective what it learns from.

Each method/objective lives in its own module under ``methods/`` or ``objectives/`` and registers
itself here by name. The contract between them:

* ``Method.load_model(model_path, cfg, task)`` loads the base for ``task`` (one of :data:`TASKS`);
  ``Method.prepare(model, cfg)`` returns the model to train with exactly the intended parameters
  trainable (a PEFT wrap, or ``requires_grad`` set on plain weights); ``Method.callbacks(model, cfg)``
  gives extra ``transformers.TrainerCallback`` s (e.g. a gradual-unfreeze schedule).
* ``Objective.train(model, tokenizer, method, train, eval, cfg, out_dir, work_dir, system_prompt)``
  trains the prepared model, writes it with :func:`save_trained` and returns a metrics dict.
* What the finetune stage leaves behind is ``out_dir/adapter`` (``produces == "adapter"``: a PEFT
  adapter folder) or ``out_dir/model`` (``produces == "model"``: full weights). ``merge`` says what
  the merge stage does with it: ``"merge"`` (fold the adapter into the base), ``"copy"`` (weights
  are already whole) or ``"refuse"`` (``merge_note`` says why and what to do instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from edgeft.registry import Registry

TASKS = ("causal-lm", "seq-cls")


def _no_callbacks(model, cfg) -> list:
    return []


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    load_model: Callable[..., Any]  # (model_path, cfg, task) -> transformers model
    prepare: Callable[..., Any]  # (model, cfg) -> model with only the intended parameters trainable
    produces: Literal["adapter", "model"]
    merge: Literal["merge", "copy", "refuse"]
    merge_note: str = ""  # for merge == "refuse": why, and what to use instead
    callbacks: Callable[..., list] = _no_callbacks  # (model, cfg) -> [TrainerCallback]
    quantized_base: bool = False  # base is loaded quantized: merge must reload it un-quantized


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    task: str  # one of TASKS: the head the model is loaded with
    fields: tuple[str, ...]  # record keys each training example needs
    train: Callable[..., dict]  # (model, tokenizer, method, train, eval, cfg, out_dir, work_dir, system_prompt)


def save_trained(model, tokenizer, method: Method, out_dir: Path) -> Path:
    """Write the trained result where the merge stage looks for it; return that folder."""
    target = Path(out_dir) / method.produces
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


METHODS: Registry[Method] = Registry("fine-tuning method")
OBJECTIVES: Registry[Objective] = Registry("fine-tuning objective")
