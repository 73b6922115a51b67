"""IA3: learned per-channel scaling vectors on attention keys/values and the feed-forward output (PEFT).

Target modules per architecture (``TARGETS``): LLaMA scales ``k_proj``, ``v_proj`` outputs and the
input of ``down_proj`` (feed-forward); BERT scales ``key``, ``value`` and the input of the
``output.dense`` projections. Other architectures use PEFT's own table. Merges like LoRA (the
vectors fold into the weights they scale).
"""

from __future__ import annotations

from edgeft.errors import UnsupportedError
from edgeft.finetune.methods.lora import load_model, task_type
from edgeft.finetune.registry import METHODS, Method

# model_type -> (target_modules, feedforward_modules); feedforward modules are scaled on their input.
TARGETS = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
}


def targets(model) -> tuple[list[str], list[str]]:
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
                                      TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TM)

    mt = model.config.model_type
    if mt in TARGETS:
        return TARGETS[mt]
    if mt in TM and mt in FF:
        return list(TM[mt]), list(FF[mt])
    raise UnsupportedError(f"ia3: no target modules known for model type {mt!r} (known: "
                           f"{', '.join(sorted(set(TARGETS) | set(TM)))}); use lora")


def prepare(model, cfg):
    from peft import IA3Config, get_peft_model

    tm, ff = targets(model)
    return get_peft_model(model, IA3Config(target_modules=tm, feedforward_modules=ff, task_type=task_type(model)))


METHODS.register("ia3")(Method("ia3", "IA3: learned scaling vectors on k/v and feed-forward (PEFT)", load_model,
                               prepare, produces="adapter", merge="merge"))
