"""Multitask: instruction tuning on a weighted mixture of tasks, each with its own system prompt and metric.

Records are ``{"task", "prompt", "response"}`` (the data stage tags each task's examples). Every
task is rendered with its own system prompt in TRL's conversational prompt/completion form (loss
on the answer only, as in ``sft``); the training set is the tasks interleaved with probabilities
proportional to their weights (``datasets.interleave_datasets``, all tasks exhausted, seeded).
Each evaluation scores every task on its own eval slice with its metric (greedy decoding) and
logs ``eval_<task>_<metric>``; the final metrics hold a ``tasks`` table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.data.templates import messages
from edgeft.errors import ConfigError, DataError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective
from edgeft.metrics.text import greedy_task_metrics

log = logging.getLogger(__name__)


def evaluate_task(model, tokenizer, records: list[dict], system_prompt: str, metric: str, max_new_tokens: int = 48,
                  batch_size: int = 16) -> dict[str, float]:
    """Greedy-decode each prompt and average :func:`~edgeft.metrics.text.task_score` over the records."""
    from edgeft.runtime.lm import TorchLM

    was_training = model.training
    model.eval()
    try:
        res = greedy_task_metrics(TorchLM(model), tokenizer, records, system_prompt, max_new_tokens, metric,
                                  batch_size)
    finally:
        if was_training:
            model.train()
    keys = ("accuracy",) if metric == "accuracy" else ("exact_match", "json_valid")
    return {k: res[k] for k in keys}


def split_by_task(records: list[dict], tasks, where: str) -> dict[str, list[dict]]:
    names = [t.name for t in tasks]
    out: dict[str, list[dict]] = {n: [] for n in names}
    for i, r in enumerate(records):
        if r["task"] not in out:
            raise DataError(f"{where} record {i}: task {r['task']!r} is not in finetune.multitask.tasks "
                            f"({', '.join(names)})")
        out[r["task"]].append(r)
    return out


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset, concatenate_datasets, interleave_datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if cfg.multitask is None:
        raise ConfigError("finetune.multitask: objective multitask needs finetune.multitask.tasks "
                          "(name, data, weight, system_prompt, metric per task)")
    tasks = cfg.multitask.tasks
    by_train = split_by_task(train_records, tasks, "train")
    by_eval = split_by_task(eval_records, tasks, "eval")
    for t in tasks:
        if not by_train[t.name]:
            raise DataError(f"train split: task {t.name!r} has no examples; check its data")

    def conv(recs, sp):
        return Dataset.from_list([{"prompt": messages(sp, r["prompt"]),
                                   "completion": [{"role": "assistant", "content": r["response"]}]} for r in recs])

    total_w = sum(t.weight for t in tasks)
    mixture = interleave_datasets([conv(by_train[t.name], t.system_prompt) for t in tasks],
                                  probabilities=[t.weight / total_w for t in tasks], seed=cfg.seed,
                                  stopping_strategy="all_exhausted")
    eval_sets = [conv(by_eval[t.name], t.system_prompt) for t in tasks if by_eval[t.name]]
    eval_ds = concatenate_datasets(eval_sets) if eval_sets else None
    # the same interleaving over task names (it depends only on lengths, probabilities and seed): per-task counts
    order = interleave_datasets([Dataset.from_dict({"task": [t.name] * len(by_train[t.name])}) for t in tasks],
                                probabilities=[t.weight / total_w for t in tasks], seed=cfg.seed,
                                stopping_strategy="all_exhausted")["task"]
    counts = {t.name: order.count(t.name) for t in tasks}
    log.info("multitask: %d mixed training examples from %s (weights %s)", len(mixture),
             {t.name: len(by_train[t.name]) for t in tasks}, {t.name: t.weight for t in tasks})

    def per_task(m) -> dict:
        out = {}
        for t in tasks:
            recs = by_eval[t.name][: cfg.eval_examples]
            if recs:
                res = evaluate_task(m, tokenizer, recs, t.system_prompt, t.metric)
                out.update({f"eval_{t.name}_{k}": v for k, v in res.items()})
        return out

    class PerTaskCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, metrics=None, **kw):
            if model is None or cfg.eval_examples == 0:
                return
            res = per_task(model)
            if metrics is not None:
                metrics.update(res)
            if state.log_history and "eval_loss" in state.log_history[-1]:
                state.log_history[-1].update(res)
            log.info("epoch %.2f: %s", state.epoch or 0, "  ".join(f"{k[5:]} {v:.3f}" for k, v in res.items()))

    ckpt_dir = work_dir / "checkpoints"
    args = SFTConfig(**common.args_kwargs(cfg, ckpt_dir, len(mixture)), max_length=cfg.max_seq_len,
                     completion_only_loss=True)
    trainer = common.quiet(SFTTrainer(model=model, args=args, train_dataset=mixture, eval_dataset=eval_ds,
                                      processing_class=tokenizer,
                                      callbacks=common.callbacks(method, model, cfg, PerTaskCallback())))
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    final = trainer.evaluate() if eval_ds is not None else {}
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    out = common.summary(trainer, result, seconds, resume, sum(len(x) for x in trainer.train_dataset["input_ids"]))
    out["eval_loss"] = final.get("eval_loss")
    out["tasks"] = {
        t.name: {"metric": t.metric, "weight": t.weight, "n_train": len(by_train[t.name]),
                 "n_eval": len(by_eval[t.name]), "n_mixed": counts[t.name],
                 **{k[len(f"eval_{t.name}_"):]: v for k, v in final.items() if k.startswith(f"eval_{t.name}_")}}
        for t in tasks}
    return out


OBJECTIVES.register("multitask")(Objective("multitask", "weighted mixture of tasks, each with its own system prompt "
                                                        "and metric, reported per task", "causal-lm",
                                            ("task", "prompt", "response"), train, records="multitask"))
