"""Pieces every Trainer-based objective shares: training arguments from a FinetuneConfig, one log line
per step, checkpoint resume, saving on the main process only, and the metrics dict the stage records
(the same keys as ``sft``: train_loss, steps, tokens_per_second, trainable_params, eval_history, ...).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from pathlib import Path

from edgeft.finetune.registry import save_trained

log = logging.getLogger(__name__)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def steps_per_epoch(n_examples: int, cfg) -> int:
    return max(1, math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum * cfg.processes)))


def args_kwargs(cfg, ckpt_dir: Path, n_train: int, metric: str = "eval_loss", greater_is_better: bool = False,
                every: int | None = None) -> dict:
    """``TrainingArguments`` keyword arguments shared by the objectives (eval + checkpoint once per epoch, or
    every ``every`` steps)."""
    if every is None:
        every = steps_per_epoch(n_train, cfg)
        if cfg.max_steps > 0:
            every = min(every, max(1, cfg.max_steps // 2))
    return dict(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.early_stopping is not None,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better,
        logging_steps=max(1, min(10, every // 4)),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.report_to or [],
        dataloader_num_workers=0,
        disable_tqdm=True,
        # TRL's configs default to bf16 autocast and gradient checkpointing; the methods load fp32 weights, and
        # on CPU bf16 is emulated and checkpointing costs a second forward per step
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=not cuda(),
        ddp_backend=None if cuda() else ("gloo" if cfg.processes > 1 else None),
    )


def _eval_metrics(logs: dict) -> str:
    """Every eval metric but the loss and the timings, ``name value`` each."""
    return "  ".join(f"{k[5:]} {v:.4g}" for k, v in logs.items()
                     if k.startswith("eval_") and k != "eval_loss" and isinstance(v, (int, float))
                     and not k.endswith(("runtime", "per_second", "preparation_time")))


def log_callback(eval_detail=_eval_metrics):
    """A callback writing one readable log line per logging step instead of transformers' printed dicts;
    ``eval_detail(logs)`` is what an evaluation line shows after the loss."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log.info("step %d/%d  loss %.4f  lr %.2e  epoch %.2f%s", state.global_step, state.max_steps,
                         logs["loss"], logs.get("learning_rate", 0.0), logs.get("epoch", 0.0),
                         # finetune.qat.preserve: the KL from the base on general text, within the loss
                         f"  general-text KL {logs['preserve_kl']:.4f}" if "preserve_kl" in logs else "")
            elif logs and "eval_loss" in logs:
                log.info("eval  loss %.4f  %s", logs["eval_loss"], eval_detail(logs))

    return LogCallback()


def callbacks(method, model, cfg, *extra) -> list:
    from transformers import EarlyStoppingCallback

    out = [*extra, log_callback(), *method.callbacks(model, cfg)]
    if cfg.early_stopping is not None:
        out.append(EarlyStoppingCallback(cfg.early_stopping.patience, cfg.early_stopping.threshold))
    return out


def quiet(trainer):
    """Drop transformers' printed log dicts (``log_callback`` writes one line per step instead)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest *complete* checkpoint in ``ckpt_dir``; incomplete ones are removed.

    A run killed while the Trainer writes a checkpoint leaves a folder without ``trainer_state.json``
    (the Trainer writes it last); resuming from that folder fails, so it goes and the one before is used.
    """
    import shutil

    def step(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = None
    for d in sorted(Path(ckpt_dir).glob("checkpoint-*"), key=step, reverse=True):
        if not d.is_dir():
            continue
        if found is None and (d / "trainer_state.json").is_file():
            found = d
        elif found is None:
            log.warning("removing incomplete checkpoint %s (no trainer_state.json; the run stopped while writing it)", d)
            shutil.rmtree(d)
    return found


def fit(trainer, ckpt_dir: Path) -> tuple[object, float, bool]:
    """Train (resuming from the last complete checkpoint in ``ckpt_dir`` if any); return (result, seconds, resumed)."""
    quiet(trainer)
    ckpt = last_checkpoint(ckpt_dir)
    if ckpt is not None:
        log.info("resuming fine-tuning from %s", ckpt)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    return result, time.perf_counter() - t0, ckpt is not None


def is_main_process(trainer) -> bool:
    return trainer.accelerator.is_main_process


def save(trainer, model, tokenizer, method, out_dir: Path) -> None:
    """Write the trained result once (the main process when several train together)."""
    trainer.accelerator.wait_for_everyone()
    if is_main_process(trainer):
        target = save_trained(trainer.accelerator.unwrap_model(model), tokenizer, method, out_dir)
        log.info("process %d of %d wrote %s", trainer.accelerator.process_index, trainer.accelerator.num_processes,
                 target)
    trainer.accelerator.wait_for_everyone()


def summary(trainer, result, seconds: float, resume: bool, n_tokens: int | None) -> dict:
    """The metrics keys ``sft`` returns, for the parts that apply to every objective."""
    history = trainer.state.log_history
    evals = list({h.get("step"): h for h in history if "eval_loss" in h}.values())  # a final evaluate() repeats the last step
    epochs_done = trainer.state.epoch or 0
    tps = None
    if n_tokens is not None and seconds > 0 and not resume:
        tps = n_tokens * epochs_done / seconds
    return {**run_metrics(trainer, result, seconds, resume), "tokens_per_second": tps,
            "processes": trainer.accelerator.num_processes,
            **history_metrics(trainer, trainer.accelerator.unwrap_model(trainer.model), evals)}


def run_metrics(trainer, result, seconds: float, resume: bool) -> dict:
    """How training went: final loss, steps, epochs, whether it resumed, seconds."""
    return {"train_loss": result.training_loss, "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch or 0, "resumed": resume, "train_seconds": seconds}


def history_metrics(trainer, model, evals: list[dict]) -> dict:
    """Parameter counts of ``model``, the best eval loss, the eval (``evals``) and loss histories, peak RSS."""
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "best_eval_loss": trainer.state.best_metric,
        "eval_history": [{k: v for k, v in h.items() if k.startswith("eval_") or k in ("epoch", "step")}
                         for h in evals],
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def load_init_adapter(model, folder: Path, method) -> None:
    """Load the trainable weights of an adapter folder (``finetune.init_adapter``) into the freshly prepared PEFT
    ``model``, so training continues it; its PEFT settings must be the ones the recipe prepares."""
    import json

    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from edgeft.errors import ConfigError

    folder = Path(folder)
    if not isinstance(model, PeftModel):
        raise ConfigError(f"finetune.init_adapter: method {method.name} trains no PEFT adapter; use method lora, dora "
                          "or ia3 (the method that trained the adapter), or remove init_adapter")
    cfg_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise ConfigError(f"finetune.init_adapter: {folder} is not a PEFT adapter folder (no adapter_config.json / "
                          "adapter_model.safetensors); point it at a run's finetune/adapter")
    saved, mine = json.loads(cfg_file.read_text()), model.peft_config["default"].to_dict()
    keys = ("peft_type", "r", "lora_alpha", "use_dora", "task_type")
    def plain(v):
        return getattr(v, "value", v)  # enums (PeftType, TaskType) as their saved strings

    diff = [f"{k} {plain(saved.get(k))} vs {plain(mine.get(k))}" for k in keys if plain(saved.get(k)) != plain(mine.get(k))]
    if diff:
        raise ConfigError(f"finetune.init_adapter: the adapter's settings differ from this recipe's ({'; '.join(diff)}, "
                          "adapter vs recipe); set finetune.method/lora to the ones the adapter was trained with")
    state = load_file(str(weights))
    try:
        res = set_peft_model_state_dict(model, state)
    except RuntimeError as e:  # shape mismatch: other target modules or rank
        raise ConfigError(f"finetune.init_adapter: the adapter does not fit this model ({str(e).splitlines()[0]}); "
                          "use the same base model and finetune.lora settings") from e
    missing = [k for k in res.missing_keys if "lora_" in k or "ia3_" in k]
    if res.unexpected_keys or missing:
        raise ConfigError(f"finetune.init_adapter: {len(missing)} adapter weights missing and "
                          f"{len(res.unexpected_keys)} unexpected (e.g. {(missing + list(res.unexpected_keys))[0]}); "
                          "set finetune.lora.target_modules to the adapter's")
    log.info("init_adapter: %d tensors loaded from %s", len(state), folder)
