"""Bottleneck adapters (Houlsby/Pfeiffer): a small down-project -> nonlinearity -> up-project module with a
residual, inserted after each block's feed-forward output; only the adapters (and a sequence
classifier's new head) train.

Built on the maintained AdapterHub ``adapters`` library (``pip install 'edgeft[adapters]'``):
adapters 1.3.0 requires ``transformers~=4.57.6``, which matches our pin, and supports LLaMA and BERT.
Its ``SeqBnConfig`` (Pfeiffer placement) with ``adapter.reduction_factor`` sets the bottleneck size.
The result is the adapter folder the library writes (``save_adapter``; with the classifier head
for a sequence classifier), reloaded with :func:`reload`.

Not mergeable: the bottleneck has a nonlinearity, so it cannot fold into the base weights, and the
added modules are not part of the base architecture the exporter traces.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeft.errors import UnsupportedError
from edgeft.finetune.methods.lora import load_model
from edgeft.finetune.registry import METHODS, Method, task_of

NAME = "edgeft"
BASE_FILE = "base_model.json"


def _adapters():
    try:
        import adapters
    except ImportError as e:
        raise UnsupportedError("method adapter needs the AdapterHub library: pip install 'edgeft[adapters]' "
                               "(adapters==1.3.0), or use method lora") from e
    return adapters


def prepare(model, cfg):
    adapters = _adapters()
    from adapters import SeqBnConfig

    adapters.init(model)
    model.add_adapter(NAME, config=SeqBnConfig(reduction_factor=cfg.adapter.reduction_factor,
                                               non_linearity=cfg.adapter.non_linearity))
    model.train_adapter(NAME)  # freezes the base, activates the adapter; a classifier head stays trainable
    return model


def save(model, target: Path) -> None:
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model.save_adapter(str(target), NAME, with_head=task_of(model) == "seq-cls", use_safetensors=True)
    (target / BASE_FILE).write_text(json.dumps({"base_model": model.config._name_or_path,
                                                "task": task_of(model)}, indent=2))


def reload(target: Path, base_model=None, task: str = "causal-lm"):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    adapters = _adapters()
    target = Path(target)
    info = json.loads((target / BASE_FILE).read_text())
    base_path = str(base_model or info["base_model"])
    if info.get("task", task) == "seq-cls":
        config = AutoConfig.from_pretrained(str(target if (target / "config.json").is_file() else base_path))
        model = AutoModelForSequenceClassification.from_pretrained(base_path, config=config, torch_dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    adapters.init(model)
    model.load_adapter(str(target), load_as=NAME, set_active=True, with_head=info.get("task") == "seq-cls",
                       use_safetensors=True)
    return model


METHODS.register("adapter")(Method(
    "adapter", "bottleneck adapters after each block (AdapterHub); not mergeable", load_model, prepare,
    produces="adapter", merge="refuse",
    merge_note=("adapter adds bottleneck modules (with a nonlinearity) between layers: they cannot fold into the "
                "weights and are not part of the architecture the exporter traces; use method lora, dora or ia3 "
                "for an exportable model, or run the adapter model directly (edgeft.finetune.load_trained)"),
    save=save, reload=reload))
