"""CLM: domain-adaptive continued pre-training on raw text (every token is learned).

Records are ``{"text": ...}``. The texts of a split are concatenated (a blank line between records
that do not end with a line break), tokenized once and cut into blocks of ``max_seq_len`` tokens
(the tail shorter than a block is dropped), as in transformers' ``run_clm`` example. Eval loss is
reported as perplexity, before training (the base model) and after every evaluation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from edgeft.errors import DataError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective

log = logging.getLogger(__name__)


def blocks(tokenizer, records: list[dict], block: int) -> list[list[int]]:
    """Token blocks of exactly ``block`` ids from the concatenated record texts."""
    parts = []
    for r in records:
        t = r["text"]
        parts.append(t if t.endswith("\n") else t + "\n\n")
    ids = tokenizer("".join(parts), add_special_tokens=False).input_ids
    return [ids[i:i + block] for i in range(0, len(ids) - block + 1, block)]


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(min(loss, 50.0))


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    block = cfg.max_seq_len
    train_blocks = blocks(tokenizer, train_records, block)
    eval_blocks = blocks(tokenizer, eval_records, block)
    for split, b in (("train", train_blocks), ("eval", eval_blocks)):
        if not b:
            raise DataError(f"clm: the {split} text is shorter than one block of {block} tokens; "
                            f"give more text or lower finetune.max_seq_len")
    log.info("clm: %d train / %d eval blocks of %d tokens", len(train_blocks), len(eval_blocks), block)

    def ds(bl):
        return Dataset.from_dict({"input_ids": bl, "attention_mask": [[1] * block for _ in bl], "labels": bl})

    class PerplexityCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics and "eval_loss" in metrics:
                ppl = perplexity(metrics["eval_loss"])
                metrics["eval_perplexity"] = ppl
                if state.log_history and "eval_loss" in state.log_history[-1]:
                    state.log_history[-1]["eval_perplexity"] = ppl

    ckpt_dir = work_dir / "checkpoints"
    args = TrainingArguments(**common.args_kwargs(cfg, ckpt_dir, len(train_blocks)))
    trainer = common.quiet(Trainer(model=model, args=args, train_dataset=ds(train_blocks),
                                   eval_dataset=ds(eval_blocks), data_collator=default_data_collator,
                                   callbacks=common.callbacks(method, model, cfg, PerplexityCallback())))
    resume = common.last_checkpoint(ckpt_dir) is not None
    base_loss = None if resume else trainer.evaluate()["eval_loss"]
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    final_loss = trainer.evaluate()["eval_loss"]
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    out = common.summary(trainer, result, seconds, resume, len(train_blocks) * block)
    out.update({
        "train_blocks": len(train_blocks),
        "eval_blocks": len(eval_blocks),
        "block_size": block,
        "base_eval_loss": base_loss,
        "base_eval_perplexity": perplexity(base_loss),
        "eval_loss": final_loss,
        "eval_perplexity": perplexity(final_loss),
    })
    return out


OBJECTIVES.register("clm")(Objective("clm", "continued pre-training on raw text, loss on every token, perplexity",
                                      "causal-lm", ("text",), train, records="raw-text"))
