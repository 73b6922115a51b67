"""Where a transformers model's parts are, by position: embeddings, the block stack, the head.

Used by the methods that set ``requires_grad`` on plain weights (freeze, gradual-unfreeze,
bitfit). The block stack is the ``nn.ModuleList`` holding ``config.num_hidden_layers`` blocks
(``model.layers`` for LLaMA, ``bert.encoder.layer`` for BERT). Parameters registered before the
first block are the embedding side, those after the last block the head side (final norm, pooler,
LM or classifier head). A tied LM head shares the input embedding matrix; it counts as head.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeft.errors import UnsupportedError

# The freshly initialised head of a sequence classifier (PEFT's ``modules_to_save`` for SEQ_CLS).
CLS_HEADS = ("classifier", "score")


@dataclass(frozen=True)
class Parts:
    stack: str  # dotted name of the ModuleList of blocks
    blocks: list[list[str]]  # parameter names of each block, bottom to top
    embeddings: list[str]  # parameter names before the first block
    head: list[str]  # parameter names after the last block, plus a tied output embedding


def parts(model, where: str = "") -> Parts:
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None)
    stack = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and n_layers and len(mod) == n_layers:
            stack = name
            break
    if stack is None:
        raise UnsupportedError(f"{where or 'method'}: cannot find the transformer block stack of "
                               f"{type(model).__name__} (no ModuleList of config.num_hidden_layers={n_layers} blocks); "
                               "use lora or full")
    names = [n for n, _ in model.named_parameters()]
    blocks = [[n for n in names if n.startswith(f"{stack}.{i}.")] for i in range(n_layers)]
    in_blocks = {n for b in blocks for n in b}
    first = min(names.index(b[0]) for b in blocks if b)
    embeddings = [n for n in names[:first] if n not in in_blocks]
    head = [n for n in names[first:] if n not in in_blocks]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        tied = {id(p) for p in out.parameters()}
        head += [n for n, p in model.named_parameters() if id(p) in tied and n not in head]
    return Parts(stack, blocks, embeddings, head)


def cls_head(model) -> list[str]:
    """Parameter names of a sequence classifier's new head (empty for a causal LM)."""
    from edgeft.finetune.registry import task_of

    if task_of(model) != "seq-cls":
        return []
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in CLS_HEADS]


def train_only(model, names, where: str):
    """Set ``requires_grad`` on exactly ``names``; raise if that is nothing."""
    keep = set(names)
    if not keep:
        raise UnsupportedError(f"{where}: no parameters would be trainable in {type(model).__name__}")
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return model
