"""Reward: a reward model trained on (prompt, chosen, rejected) pairs (TRL RewardTrainer).

The model is the base with a one-output sequence-classification head (``num_labels=1``, set by the
objective: the finetune stage loads the base with it), LoRA-wrapped with PEFT's SEQ_CLS task (the
new head is trained in full, as ``modules_to_save``). The loss is the Bradley-Terry pairwise loss
``-log sigmoid(r(chosen) - r(rejected))``. A pair is scored as one sequence per answer: the chat
template of system prompt, request and answer (tokenizers without a chat template: request and
answer joined by a newline, with the tokenizer's special tokens), cut to ``finetune.max_seq_len``
tokens from the left, so the answers, where the pair differs, are kept. The same encoding is used
when the model scores GRPO completions (:mod:`edgeft.finetune.rewards`, ``reward-model``).

Saved like the classify objective: the adapter folder also holds the model config (one label, the
pad token id), so :func:`edgeft.finetune.load_trained` reloads the scorer. Reported: pairwise
accuracy (chosen scored above rejected) and mean margin r(chosen) - r(rejected) on every eval pair,
before and after training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.errors import ConfigError, DataError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective

log = logging.getLogger(__name__)


def encode(tok, system_prompt: str, prompt: str, answer: str, max_len: int | None = None) -> list[int]:
    """Token ids of one scored sequence (see the module docstring), the last ``max_len`` kept."""
    from edgeft.data.templates import conversation_text

    if getattr(tok, "chat_template", None):
        ids = tok(conversation_text(tok, system_prompt, prompt, answer), add_special_tokens=False).input_ids
    else:
        ids = tok(f"{prompt}\n{answer}").input_ids
    return ids[-max_len:] if max_len else ids


def scores(model, pad_id: int, seqs: list[list[int]], batch_size: int = 16) -> list[float]:
    """The model's single logit per sequence (right-padded: the head reads the last non-pad token)."""
    import torch

    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in chunk], device=model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=model.device)
        with torch.inference_mode():
            out.extend(model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
    return out


def pair_accuracy(model, tok, records: list[dict], system_prompt: str, max_len: int) -> dict:
    """Pairwise accuracy (chosen above rejected) and mean margin over ``records``."""
    was_training = model.training
    model.eval()
    try:
        c = scores(model, tok.pad_token_id, [encode(tok, system_prompt, r["prompt"], r["chosen"], max_len)
                                             for r in records])
        j = scores(model, tok.pad_token_id, [encode(tok, system_prompt, r["prompt"], r["rejected"], max_len)
                                             for r in records])
    finally:
        if was_training:
            model.train()
    n = max(1, len(records))
    return {"pair_accuracy": sum(a > b for a, b in zip(c, j)) / n,
            "mean_margin": sum(a - b for a, b in zip(c, j)) / n, "pairs": len(records)}


def _dataset(tok, records: list[dict], system_prompt: str, max_len: int):
    from datasets import Dataset

    rows = [{"chosen_ids": encode(tok, system_prompt, r["prompt"], r["chosen"], max_len),
             "rejected_ids": encode(tok, system_prompt, r["prompt"], r["rejected"], max_len)} for r in records]
    same = sum(r["chosen_ids"] == r["rejected_ids"] for r in rows)
    if rows and same == len(rows):
        raise DataError(f"reward: all {same} pairs are identical once cut to finetune.max_seq_len={max_len} "
                        "tokens; raise max_seq_len")
    return Dataset.from_list(rows), same


def set_pad(model, tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for m in (model, getattr(model, "get_base_model", lambda: model)()):
        m.config.pad_token_id = tok.pad_token_id


def _takes_use_cache(model) -> bool:
    import inspect

    base = getattr(model, "get_base_model", lambda: model)()
    params = inspect.signature(type(base).forward).parameters
    return "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _trainer_class(model):
    """TRL's RewardTrainer; for encoders (BERT: no KV cache) without the ``use_cache=False`` it passes to forward."""
    from trl import RewardTrainer

    if _takes_use_cache(model):
        return RewardTrainer

    class Trainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            call = model

            def forward(**kw):
                kw.pop("use_cache", None)
                return call(**kw)

            return super().compute_loss(forward, inputs, return_outputs, num_items_in_batch)

    return Trainer


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from trl import RewardConfig

    n_head = int(getattr(model.config, "num_labels", 0) or 0)
    if n_head != 1:
        raise ConfigError(f"reward: the model head has {n_head} outputs, a reward model has 1; remove "
                          "finetune.num_labels (objective reward sets it)")
    set_pad(model, tokenizer)
    train_ds, same = _dataset(tokenizer, train_records, system_prompt, cfg.max_seq_len)
    if same:
        log.warning("reward: %d of %d pairs are identical once cut to %d tokens and teach nothing", same,
                    len(train_records), cfg.max_seq_len)
    eval_ds = _dataset(tokenizer, eval_records, system_prompt, cfg.max_seq_len)[0] if eval_records else None
    before = pair_accuracy(model, tokenizer, eval_records, system_prompt, cfg.max_seq_len) if eval_records else {}
    ckpt_dir = work_dir / "checkpoints"
    kw = common.args_kwargs(cfg, ckpt_dir, len(train_records))
    if eval_ds is None:
        kw.update(eval_strategy="no", load_best_model_at_end=False)
    args = RewardConfig(**kw, max_length=None, disable_dropout=True)
    trainer = common.quiet(_trainer_class(model)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                         processing_class=tokenizer, callbacks=common.callbacks(method, model, cfg)))
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    after = pair_accuracy(trained, tokenizer, eval_records, system_prompt, cfg.max_seq_len) if eval_records else {}
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    target = Path(out_dir) / method.produces
    if common.is_main_process(trainer) and not (target / "config.json").is_file():
        base = getattr(trained, "get_base_model", lambda: trained)()
        base.config.save_pretrained(str(target))  # an adapter folder: keep the one-label head and the pad id
    n_tokens = int(sum(len(a) + len(b) for a, b in zip(train_ds["chosen_ids"], train_ds["rejected_ids"])))
    out = common.summary(trainer, result, seconds, resume, n_tokens)
    out.update({"pairs_indistinct_after_truncation": same,
                "pair_accuracy_before": before.get("pair_accuracy"), "mean_margin_before": before.get("mean_margin"),
                "eval_pair_accuracy": after.get("pair_accuracy"), "eval_mean_margin": after.get("mean_margin"),
                "eval_pairs": after.get("pairs", 0)})
    if after:
        log.info("reward: held-out pair accuracy %.3f -> %.3f, mean margin %.3f, over %d pairs",
                 before["pair_accuracy"], after["pair_accuracy"], after["mean_margin"], after["pairs"])
    return out


OBJECTIVES.register("reward")(Objective("reward", "reward model on prompt/chosen/rejected pairs (TRL RewardTrainer)",
                                         "seq-cls", ("prompt", "chosen", "rejected"), train, records="pairs",
                                         num_labels=1))
