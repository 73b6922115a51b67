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
* Optional, for methods whose result is not a ``save_pretrained`` folder: ``Method.save(model, target)``
  writes it and ``Method.reload(target, base_model, task)`` loads it back for inference.
  ``Method.padding_free`` is False for methods that prepend virtual tokens (packed rows would
  attend across examples), and the finetune stage then batches with padding.
* :func:`save_trained` also writes ``edgeft_method.json`` (method, task, merge semantics), so the
  merge stage knows what it was given; :func:`load_trained` reloads any method's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from edgeft.registry import Registry

TASKS = ("causal-lm", "seq-cls", "image-cls")


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
    save: Optional[Callable[..., None]] = None  # (model, target_dir) -> None; default: model.save_pretrained
    reload: Optional[Callable[..., Any]] = None  # (target_dir, base_model, task) -> model; default: see load_trained
    padding_free: bool = True  # False: virtual tokens are prepended, packed rows would mix examples


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    task: str  # one of TASKS: the head the model is loaded with
    fields: tuple[str, ...]  # record keys each training example needs
    train: Callable[..., dict]  # (model, tokenizer, method, train, eval, cfg, out_dir, work_dir, system_prompt)
    # What a causal-LM objective's records are (the pipeline's task adapter follows it): chat turns
    # (prompt/response), raw text (no task examples: perplexity is the metric) or tagged tasks of a mixture;
    # "pairs": a seq-cls objective on preference pairs (prompt/chosen/rejected: a reward model).
    records: Literal["chat", "raw-text", "multitask", "pairs"] = "chat"
    # seq-cls objectives whose head size is fixed by the objective, not by labels in the data (reward: 1 score)
    num_labels: Optional[int] = None


MARKER = "edgeft_method.json"


def task_of(model) -> str:
    """``"seq-cls"`` for a sequence classifier (plain or PEFT-wrapped), else ``"causal-lm"``: the model's class
    is its architecture (a head added in memory is not in its config's ``architectures`` yet)."""
    from edgeft.artifacts import model_kind

    base = getattr(model, "get_base_model", lambda: model)()
    return "seq-cls" if model_kind({"architectures": [type(base).__name__]}) == "classifier" else "causal-lm"


def save_trained(model, tokenizer, method: Method, out_dir: Path) -> Path:
    """Write the trained result where the merge stage looks for it; return that folder."""
    import json

    target = Path(out_dir) / method.produces
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # several training processes: only the main one writes
        return target
    if method.save is not None:
        method.save(model, target)
    else:
        model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    (target / MARKER).write_text(json.dumps({"method": method.name, "produces": method.produces,
                                             "merge": method.merge, "task": task_of(model)}, indent=2))
    return target


def read_marker(target: Path) -> dict:
    """What :func:`save_trained` recorded about ``target`` (empty for folders written before the marker)."""
    import json

    f = Path(target) / MARKER
    return json.loads(f.read_text()) if f.is_file() else {}


def load_trained(target: Path, base_model: Path | str | None = None):
    """Reload a finetune result (PEFT adapter, full weights or a method's own format) in fp32, eval mode.

    ``base_model`` is the base folder for adapters (default: the one the adapter names).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    target = Path(target)
    info = read_marker(target)
    method = METHODS.get(info["method"]) if info.get("method") in METHODS else None
    if method is not None and method.reload is not None:
        return method.reload(target, base_model, info.get("task", "causal-lm")).eval()
    if (target / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        pcfg = PeftConfig.from_pretrained(str(target))
        base_path = str(base_model or pcfg.base_model_name_or_path)
        if str(pcfg.task_type or "").upper().endswith("SEQ_CLS"):
            # the classify objective keeps the labelled config next to the adapter
            src = target if (target / "config.json").is_file() else base_path
            config = AutoConfig.from_pretrained(str(src))
            if hasattr(config, "quantization_config"):  # saved from a qlora run: the base reloads in fp32
                del config.quantization_config
            base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config,
                                                                      torch_dtype=torch.float32)
        else:
            base = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(target)).eval()
    from edgeft.artifacts import model_kind

    config = AutoConfig.from_pretrained(str(target))
    cls = AutoModelForSequenceClassification if model_kind(config) == "classifier" else AutoModelForCausalLM
    return cls.from_pretrained(str(target), torch_dtype=torch.float32).eval()


METHODS: Registry[Method] = Registry("fine-tuning method")
OBJECTIVES: Registry[Objective] = Registry("fine-tuning objective")
