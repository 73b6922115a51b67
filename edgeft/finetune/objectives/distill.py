"""Distill: knowledge distillation from a teacher's logits into a student cut from the teacher.

The student is the edge-typical one: the teacher with decoder blocks dropped (``keep_every: k``
keeps blocks 0, k, 2k, ...; or ``keep_layers: [...]``), every kept weight copied, and
``config.num_hidden_layers`` / ``config.layer_types`` fixed so it saves and reloads as a smaller
model of the same architecture. The method then decides what of it is trained (``full`` trains
all of it; ``lora`` an adapter on it, in which case the student base is saved next to the adapter
as ``student/`` and the merge stage folds the adapter into that).

Loss on the answer tokens (prompt tokens masked, as in ``sft``), Hinton et al.'s soft-target loss::

    T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha * CE(student, labels)

(PyTorch's ``kl_div(log_softmax(student/T), log_softmax(teacher/T))``). TRL's own
``DistillationTrainer`` is on-policy (the student generates, the teacher scores), which costs a
generation per step; this off-policy logit loss on the dataset is a ``compute_loss`` override of
the plain transformers Trainer. Reported: student vs teacher parameters, and on the eval answers
top-1 agreement, KL and token accuracy of the student vs the teacher, before and after training.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from edgeft.data.templates import conversation_text, prompt_ids
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective

log = logging.getLogger(__name__)


def kept_layers(n_layers: int, student_cfg) -> list[int]:
    """Teacher block indices the student keeps (validated against the teacher's depth)."""
    if student_cfg.keep_layers is not None:
        keep = list(student_cfg.keep_layers)
        bad = [i for i in keep if not 0 <= i < n_layers]
        if bad or len(set(keep)) != len(keep) or keep != sorted(keep):
            raise ConfigError(f"finetune.distill.student.keep_layers: {keep} must be increasing, distinct indices "
                              f"in 0..{n_layers - 1} (the teacher has {n_layers} decoder blocks)")
    else:
        keep = list(range(0, n_layers, student_cfg.keep_every))
    if not keep or len(keep) >= n_layers:
        raise ConfigError(f"finetune.distill.student: keeps {len(keep)} of {n_layers} decoder blocks; "
                          f"the student must keep at least one block and drop at least one")
    return keep


def _decoder_layers(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise UnsupportedError(f"distill: cannot find the decoder blocks of {type(model).__name__} "
                               f"(expected model.get_decoder().layers); use a LLaMA-style decoder as teacher")
    return decoder, layers


def make_student(teacher, keep: list[int]):
    """A copy of ``teacher`` with only the decoder blocks in ``keep`` (weights copied, config fixed)."""
    import torch

    student = copy.deepcopy(teacher)
    decoder, layers = _decoder_layers(student)
    decoder.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, block in enumerate(decoder.layers):
        for module in block.modules():  # the KV cache is indexed by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    cfg = student.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    return student


def _tokenize(tokenizer, records: list[dict], system_prompt: str, max_len: int) -> list[dict]:
    rows = []
    for r in records:
        p = prompt_ids(tokenizer, system_prompt, r["prompt"])
        ids = tokenizer(conversation_text(tokenizer, system_prompt, r["prompt"], r["response"]),
                        add_special_tokens=False).input_ids[:max_len]
        labels = [-100] * min(len(p), len(ids)) + ids[len(p):]
        if any(x != -100 for x in labels):
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """(total, kd, ce) over the positions whose next token is a label (shifted like the LM loss)."""
    import torch.nn.functional as F

    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    y = labels[:, 1:]
    mask = y != -100
    s, t, y = s[mask], t[mask], y[mask]
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    kd = kl * temperature ** 2
    ce = F.cross_entropy(s, y)
    return kd + alpha * ce, kd, ce


def agreement(student, teacher, rows: list[dict], collator, batch_size: int = 8) -> dict:
    """Top-1 agreement, KL(teacher || student) at T=1 and token accuracy of both on the answer tokens."""
    import torch
    import torch.nn.functional as F

    agree = kl = s_acc = t_acc = n = 0.0
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = {k: v.to(device) for k, v in collator(rows[i:i + batch_size]).items()}
            seq = b["input_ids"].size(1)
            s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -seq:-1].float()
            t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            y = b["labels"][:, 1:]
            m = y != -100
            s, t, y = s[m], t[m], y[m]
            agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
            s_acc += (s.argmax(-1) == y).sum().item()
            t_acc += (t.argmax(-1) == y).sum().item()
            kl += F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum").item()
            n += m.sum().item()
    if was_training:
        student.train()
    n = max(n, 1)
    return {"top1_agreement": agree / n, "kl": kl / n, "student_token_accuracy": s_acc / n,
            "teacher_token_accuracy": t_acc / n, "tokens": int(n)}


def load_teacher(spec: str | None, fallback: str):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.models import resolve_model

    path = resolve_model(spec).path if spec else fallback
    teacher = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, str(path)


def _base_path(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config._name_or_path


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    d = cfg.distill
    teacher, teacher_path = load_teacher(d.teacher, _base_path(model))
    del model  # the student is cut from the teacher, then prepared by the method
    n_teacher_layers = teacher.config.num_hidden_layers
    keep = kept_layers(n_teacher_layers, d.student)
    student = make_student(teacher, keep)
    if method.produces == "adapter":
        # the adapter's base is the student, not the recipe model: ship the student next to the adapter
        # (saved before the method wraps it; adapter training leaves these weights untouched)
        from accelerate import PartialState

        if PartialState().is_main_process:
            student.save_pretrained(str(out_dir / "student"), safe_serialization=True)
            tokenizer.save_pretrained(str(out_dir / "student"))
    student = method.prepare(student, cfg)
    log.info("distill: student keeps decoder blocks %s of %d from %s (T=%.2g, alpha=%.2g)", keep, n_teacher_layers,
             teacher_path, d.temperature, d.alpha)

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    train_rows = _tokenize(tokenizer, train_records, system_prompt, cfg.max_seq_len)
    eval_rows = _tokenize(tokenizer, eval_records, system_prompt, cfg.max_seq_len)

    class DistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            out = model(**inputs)
            teacher.to(out.logits.device)
            import torch

            with torch.no_grad():
                t_logits = teacher(**inputs).logits
            # prompt-learning methods prepend virtual tokens: align on the real tokens (the last positions)
            loss, _, _ = kd_loss(out.logits[:, -t_logits.size(1):], t_logits, labels, d.temperature, d.alpha)
            return (loss, out) if return_outputs else loss

    ckpt_dir = work_dir / "checkpoints"
    args = TrainingArguments(**common.args_kwargs(cfg, ckpt_dir, len(train_rows)), remove_unused_columns=False)
    trainer = common.quiet(DistillTrainer(model=student, args=args, train_dataset=Dataset.from_list(train_rows),
                                          eval_dataset=Dataset.from_list(eval_rows), data_collator=collator,
                                          callbacks=common.callbacks(method, student, cfg)))
    before = agreement(student, teacher, eval_rows, collator)
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    final = trainer.evaluate()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    after = agreement(trained, teacher, eval_rows, collator)
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    out = common.summary(trainer, result, seconds, resume, sum(len(r["input_ids"]) for r in train_rows))
    student_params = sum(p.numel() for n, p in trained.named_parameters() if "lora_" not in n)  # the student's own
    teacher_params = sum(p.numel() for p in teacher.parameters())
    out.update({
        "teacher": teacher_path,
        "teacher_layers": n_teacher_layers,
        "student_layers": len(keep),
        "kept_layers": keep,
        "teacher_params": teacher_params,
        "student_params": student_params,
        "student_to_teacher_params": student_params / teacher_params,
        "temperature": d.temperature,
        "alpha": d.alpha,
        "eval_loss": final.get("eval_loss"),
        "agreement_before": before,
        "agreement_after": after,
        "eval_top1_agreement": after["top1_agreement"],
        "eval_kl": after["kl"],
    })
    return out


OBJECTIVES.register("distill")(Objective("distill", "distill a teacher's logits into a student cut from it "
                                                    "(dropped decoder blocks)", "causal-lm",
                                          ("prompt", "response"), train))
