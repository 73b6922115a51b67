"""DPO: direct preference optimization on (prompt, chosen, rejected) pairs (TRL DPOTrainer).

Pairs are given to TRL in its conversational form, so TRL applies the chat template to the prompt
and scores only the assistant answers. The reference policy is the model as it arrives: for a PEFT
method that is the base with the adapter disabled (TRL 1.16 would otherwise keep a frozen "ref"
copy of the freshly initialized adapter, which computes the same log-probs at extra cost); for a
full-weight method TRL loads a frozen copy of the base. Reported: reward accuracy (chosen reward
above rejected) and mean reward margin on the eval pairs, plus greedy exact match of the answer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.data.templates import conversation_text, messages
from edgeft.errors import DataError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective

log = logging.getLogger(__name__)


def _conversational(records: list[dict], system_prompt: str) -> list[dict]:
    return [{"prompt": messages(system_prompt, r["prompt"]),
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in records]


def _drop_ref_adapter(model) -> bool:
    """Score the reference with the adapter disabled instead of a frozen copy of the (zero-initialized) adapter."""
    peft_config = getattr(model, "peft_config", None)
    if not peft_config or "ref" not in peft_config:
        return False
    model.delete_adapter("ref")
    model.set_adapter("default")
    return True


def indistinct_pairs(tokenizer, records: list[dict], system_prompt: str, max_len: int) -> int:
    """Pairs whose chosen and rejected sequences are identical once truncated to ``max_len`` tokens.

    Such a pair has no learning signal (equal log-ratios: the loss stays at ln 2); it happens when the
    prompt fills most of ``max_seq_len`` and the answers differ only further on.
    """
    n = 0
    for r in records:
        c, j = (tokenizer(conversation_text(tokenizer, system_prompt, r["prompt"], r[k]),
                          add_special_tokens=False).input_ids[:max_len] for k in ("chosen", "rejected"))
        n += c == j
    return n


def _reward_metrics(metrics: dict, prefix: str = "eval_") -> dict:
    keys = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
            "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected"}
    return {v: metrics.get(prefix + k) for k, v in keys.items()}


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from edgeft.finetune.objectives.sft import exact_match

    same = indistinct_pairs(tokenizer, train_records, system_prompt, cfg.max_seq_len)
    if same == len(train_records):
        raise DataError(f"dpo: all {same} training pairs are identical once truncated to finetune.max_seq_len="
                        f"{cfg.max_seq_len} tokens (the prompt fills it before the answers differ); raise max_seq_len")
    if same:
        log.warning("dpo: %d of %d pairs are identical once truncated to %d tokens and teach nothing; "
                    "raise finetune.max_seq_len", same, len(train_records), cfg.max_seq_len)
    ckpt_dir = work_dir / "checkpoints"
    kw = common.args_kwargs(cfg, ckpt_dir, len(train_records))
    loss_type = [cfg.dpo.loss_type] if isinstance(cfg.dpo.loss_type, str) else list(cfg.dpo.loss_type)
    args = DPOConfig(**kw, max_length=cfg.max_seq_len, beta=cfg.dpo.beta, loss_type=loss_type,
                     loss_weights=cfg.dpo.loss_weights)
    trainer = common.quiet(DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_conversational(train_records, system_prompt)),
        eval_dataset=Dataset.from_list(_conversational(eval_records, system_prompt)),
        processing_class=tokenizer,
        callbacks=common.callbacks(method, model, cfg),
    ))
    ref = "base with the adapter disabled" if _drop_ref_adapter(trainer.model) else "frozen copy of the base"
    log.info("dpo: reference policy = %s; beta %.3g", ref, cfg.dpo.beta)
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    final = trainer.evaluate()
    em = exact_match(trainer.model, tokenizer, [{"prompt": r["prompt"], "response": r["chosen"]}
                                                for r in eval_records[: cfg.eval_examples]], system_prompt)
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    d = trainer.train_dataset  # each pair is two sequences: prompt + chosen, prompt + rejected
    n_tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]))
    out = common.summary(trainer, result, seconds, resume, n_tokens)
    out.update(_reward_metrics(final))
    out.update({"pairs_indistinct_after_truncation": same, "reference": ref, "beta": cfg.dpo.beta, "loss_type": loss_type, "eval_loss": final.get("eval_loss"),
                "eval_exact_match": em["exact_match"], "eval_json_valid": em["json_valid"]})
    return out


OBJECTIVES.register("dpo")(Objective("dpo", "preference optimization on prompt/chosen/rejected pairs (TRL DPO)",
                                      "causal-lm", ("prompt", "chosen", "rejected"), train))
