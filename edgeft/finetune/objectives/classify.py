"""Classify: sequence classification (text -> label) with a classification head, transformers Trainer.

Records are ``{"text", "label"}``; labels may be strings or ints. The label set is read from the
training records (:func:`label_list`) and written into the saved config as ``id2label`` /
``label2id``, so every later stage and the release bundle know what each logit means. Each
evaluation reports accuracy and macro-F1 (:func:`edgeft.metrics.classify.scores`) next to the loss;
early stopping and checkpoint resume work as for the other objectives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ConfigError, DataError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective
from edgeft.metrics.classify import class_ids, scores

log = logging.getLogger(__name__)


def label_list(records: Sequence[dict]) -> list[str]:
    """The classes, in id order: ints (or int-like strings) numerically, anything else alphabetically."""
    labels = {str(r["label"]) for r in records}
    if not labels:
        raise DataError("classify: no labelled training records")
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def label_ids(records: Sequence[dict], labels: Sequence[str], split: str = "train") -> list[int]:
    return class_ids(records, {lab: i for i, lab in enumerate(labels)},
                     f"classify: {split} record {{n}} has label {{label!r}}, which the training split does not have "
                     "(labels: {labels})")


def set_labels(model, labels: Sequence[str]) -> None:
    """Write id2label / label2id into the model config (the saved config.json carries them)."""
    cfg = model.config
    cfg.id2label = {i: lab for i, lab in enumerate(labels)}
    cfg.label2id = {lab: i for i, lab in enumerate(labels)}


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    labels = label_list(train_records)
    n_head = int(getattr(model.config, "num_labels", 0) or 0)
    if n_head != len(labels):
        raise ConfigError(f"classify: the model head has {n_head} outputs but the training data has {len(labels)} "
                          f"labels ({', '.join(labels[:10])}); set finetune.num_labels: {len(labels)}")
    set_labels(model, labels)
    base = getattr(model, "get_base_model", lambda: model)()
    set_labels(base, labels)

    def encode(records, split):
        ids = label_ids(records, labels, split)
        enc = tokenizer([str(r["text"]) for r in records], truncation=True, max_length=cfg.max_seq_len)
        return Dataset.from_dict({**enc, "labels": ids})

    train_ds = encode(train_records, "train")
    eval_ds = encode(eval_records, "eval") if eval_records else None

    def compute_metrics(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        s = scores(np.argmax(logits, -1), p.label_ids, len(labels))
        return {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}

    ckpt_dir = work_dir / "checkpoints"
    kw = common.args_kwargs(cfg, ckpt_dir, len(train_records))
    if eval_ds is None:
        kw.update(eval_strategy="no", load_best_model_at_end=False)
    for k in ("optim", "group_by_length", "gradient_checkpointing", "torch_compile"):
        kw.setdefault(k, getattr(cfg, k))
    args = TrainingArguments(**kw)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=compute_metrics, callbacks=common.callbacks(method, model, cfg))
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    qat = None
    if cfg.litert_qat is not None:
        from edgeft.finetune import litert_qat

        qat = litert_qat.train(trainer.model, tokenizer, train_records, eval_records,
                               label_ids(train_records, labels), label_ids(eval_records, labels, "eval"), cfg,
                               cfg.max_seq_len)
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    if common.is_main_process(trainer) and not (Path(out_dir) / method.produces / "config.json").is_file():
        base.config.save_pretrained(str(Path(out_dir) / method.produces))  # an adapter folder: keep the labels
    n_tokens = int(sum(len(x) for x in train_ds["input_ids"]))
    metrics = common.summary(trainer, result, seconds, resume, n_tokens)
    final = trainer.evaluate() if eval_ds is not None else {}
    if qat is not None:
        metrics["litert_qat"] = qat
    metrics.update({"labels": labels, "eval_accuracy": final.get("eval_accuracy"),
                    "eval_macro_f1": final.get("eval_macro_f1"), "eval_loss": final.get("eval_loss")})
    if final:
        log.info("classify: eval accuracy %.4f, macro-F1 %.4f over %d examples", final["eval_accuracy"],
                 final["eval_macro_f1"], len(eval_records))
    return metrics


OBJECTIVES.register("classify")(Objective("classify", "sequence classification (text -> label), accuracy/macro-F1",
                                          "seq-cls", ("text", "label"), train))
