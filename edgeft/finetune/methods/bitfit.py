"""BitFit: train only the bias terms (Ben Zaken et al., 2021); the result is a whole model.

Which parameters:
* every parameter named ``*.bias`` (BERT: attention, feed-forward, LayerNorm, pooler biases);
* a sequence classifier's new head (``classifier``/``score``, weight and bias), as in the paper:
  a random head cannot be learned through biases alone;
* models whose blocks have **no bias terms** (LLaMA: bias-free linears, RMSNorm has only a gain)
  train their normalization gains instead (every ``*norm*.weight``: per-channel vectors of the
  same size and role as a bias). This is logged, and :func:`trainable_names` raises
  :class:`UnsupportedError` when neither exists.
"""

from __future__ import annotations

import logging

from edgeft.errors import UnsupportedError
from edgeft.finetune.methods._parts import cls_head, parts, train_only
from edgeft.finetune.methods.lora import load_model
from edgeft.finetune.registry import METHODS, Method

log = logging.getLogger(__name__)


def _is_norm(model, name: str) -> bool:
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    return "norm" in type(mod).__name__.lower() and name.endswith(".weight")


def trainable_names(model) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    block = {x for b in parts(model, "bitfit").blocks for x in b}
    biases = [n for n in names if n.endswith(".bias")]
    if any(n in block for n in biases):
        chosen = biases
    else:
        chosen = [n for n in names if _is_norm(model, n)]
        if not chosen:
            raise UnsupportedError(f"bitfit: {type(model).__name__} has no bias terms and no normalization gains to "
                                   "train; use lora or ia3")
        log.info("bitfit: %s blocks have no bias terms; training the %d normalization gains instead",
                 type(model).__name__, len(chosen))
    head = cls_head(model)
    return chosen + [n for n in head if n not in chosen]


def prepare(model, cfg):
    return train_only(model, trainable_names(model), "bitfit")


METHODS.register("bitfit")(Method("bitfit", "bias terms only (norm gains on bias-free LLaMA); writes a whole model",
                                  load_model, prepare, produces="model", merge="copy"))
