"""SFT: instruction tuning with the model's chat template, loss on the answer only (TRL SFTTrainer).

Examples are given to TRL in its conversational prompt/completion form, so TRL applies the chat
template and masks the prompt tokens (``completion_only_loss``): only the assistant answer is
learned.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

from edgeft.data.templates import messages
from edgeft.finetune.objectives import common
from edgeft.finetune import speed
from edgeft.finetune.registry import OBJECTIVES, Objective, save_trained

log = logging.getLogger(__name__)


def _conversational(records: list[dict], system_prompt: str) -> list[dict]:
    return [{"prompt": messages(system_prompt, r["prompt"]),
             "completion": [{"role": "assistant", "content": r["response"]}]} for r in records]


def exact_match(model, tokenizer, records, system_prompt, max_new_tokens=48, batch_size=16) -> dict:
    """Greedy-decode each eval prompt and score it against the reference answer."""
    from edgeft.metrics.text import greedy_task_metrics
    from edgeft.runtime.lm import TorchLM

    was_training = model.training
    model.eval()
    try:
        res = greedy_task_metrics(TorchLM(model), tokenizer, records, system_prompt, max_new_tokens,
                                  batch_size=batch_size)
    finally:
        if was_training:
            model.train()
    return {"exact_match": res["exact_match"], "json_valid": res["json_valid"] or 0.0}


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str, aux_loss=None) -> dict:
    """Train ``model`` on the answers of ``train_records``; ``aux_loss(model) -> (loss, value logged)`` is added to
    each training step's loss (finetune.qat.preserve's general-text distillation)."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback

    ckpt_dir = work_dir / "checkpoints"
    exact = _exact_match_callback(tokenizer, eval_records[: cfg.eval_examples], system_prompt, cfg)
    timer = speed.step_timer()
    callbacks = [exact, common.log_callback(_token_accuracy), timer, *method.callbacks(model, cfg)]
    if cfg.early_stopping is not None:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping.patience, cfg.early_stopping.threshold))
    plain_head = (cfg.answer_only_lm_head and not cfg.chunked_lm_head and method.padding_free
                  and not common.cuda() and speed.accepts_logits_to_keep(model))
    trainer = _trainer_class(plain_head, aux_loss)(
        model=model,
        args=_args(cfg, ckpt_dir, len(train_records)),
        train_dataset=Dataset.from_list(_conversational(train_records, system_prompt)),
        eval_dataset=Dataset.from_list(_conversational(eval_records, system_prompt)),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    result, seconds, resume = _fit(trainer, model, tokenizer, cfg, work_dir, ckpt_dir)
    save_trained(trainer.model, tokenizer, method, out_dir)
    return _metrics(trainer, result, seconds, resume, timer, type(exact).seconds)


def _args(cfg, ckpt_dir: Path, n_train: int):
    """TRL's SFTConfig: the shared training arguments (:func:`common.args_kwargs`), evaluated and saved once per
    epoch, with the answer-only loss and the speed settings of ``cfg``."""
    from trl import SFTConfig

    every = max(1, math.ceil(n_train / (cfg.batch_size * cfg.grad_accum)))
    kw = common.args_kwargs(cfg, ckpt_dir, n_train, every=every)
    kw.update(
        max_length=cfg.max_seq_len,
        completion_only_loss=True,
        ddp_backend=None,
        # TRL turns gradient checkpointing on by default; on CPU it costs a second forward per step.
        gradient_checkpointing=cfg.gradient_checkpointing,
        group_by_length=cfg.group_by_length,
        optim=cfg.optim,
        torch_compile=cfg.torch_compile,
        # bf16 autocast (TRL's default is bf16=True everywhere, slow where bf16 is emulated); weights stay fp32
        bf16=speed.use_bf16(cfg.precision),
    )
    return SFTConfig(**kw)


def _exact_match_callback(tokenizer, em_records: list[dict], system_prompt: str, cfg):
    """A callback adding eval_exact_match / eval_json_valid (greedy decoding on ``em_records``) to each evaluation;
    its class's ``seconds`` counts the time spent."""
    import torch
    from transformers import TrainerCallback

    class ExactMatchCallback(TrainerCallback):
        seconds = 0.0

        def on_evaluate(self, args, state, control, model=None, metrics=None, **kw):
            if not em_records or model is None:
                return
            t = time.perf_counter()
            # a bf16 base (speed.bf16_lora_base) runs under autocast only
            with torch.autocast(model.device.type, torch.bfloat16, enabled=speed.use_bf16(cfg.precision)):
                res = exact_match(model, tokenizer, em_records, system_prompt)
            ExactMatchCallback.seconds += time.perf_counter() - t
            if metrics is not None:
                metrics.update({f"eval_{k}": v for k, v in res.items()})
            state.log_history[-1].update({f"eval_{k}": v for k, v in res.items()})
            log.info("epoch %.2f: eval exact match %.3f", state.epoch or 0, res["exact_match"])

    return ExactMatchCallback()


def _token_accuracy(logs: dict) -> str:
    return f"token accuracy {logs.get('eval_mean_token_accuracy', float('nan')):.3f}"


def _trainer_class(plain_head: bool, aux_loss=None):
    """TRL's SFTTrainer; with ``plain_head`` (CPU) a training step scores only the answer positions
    (speed.answer_only_loss); with ``aux_loss`` each training step adds it (logged as ``preserve_kl``)."""
    import torch
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self._task_loss(model, inputs, return_outputs, num_items_in_batch)
            if aux_loss is None or return_outputs or not model.training:
                return loss
            extra, value = aux_loss(model)
            self._metrics["train"]["preserve_kl"].append(float(value))
            # per micro-batch: the optimizer step sees the mean over the accumulated ones
            return loss + extra / self.args.gradient_accumulation_steps

        def _task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not plain_head or return_outputs or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, stats = speed.answer_only_loss(model, inputs, num_items_in_batch)
            if loss is None:  # past the logits cap: TRL's chunked head keeps memory bounded
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL and Trainer do: DDP averages the gradients
            # the metrics TRL logs for a step, but entropy (see speed.answer_only_loss): token accuracy, tokens seen
            n = self.accelerator.gather_for_metrics(stats["count"]).sum()
            if n > 0:
                self._metrics["train"]["mean_token_accuracy"].append(
                    (self.accelerator.gather_for_metrics(stats["correct"]).sum() / n).item())
            ref = inputs.get("attention_mask", inputs.get("position_ids"))
            seen = ref.sum() if "attention_mask" in inputs else torch.tensor(ref.size(1))
            self._total_train_tokens += self.accelerator.gather_for_metrics(seen).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return Trainer


def _fit(trainer, model, tokenizer, cfg, work_dir: Path, ckpt_dir: Path):
    """Train with the speed settings of ``cfg`` in force (padding-free rows, bf16 LoRA base, answer-only LM head);
    (result, seconds, resumed) as :func:`common.fit`."""
    with contextlib.ExitStack() as stack:
        packed = stack.enter_context(speed.use_packed_attention(model, cfg.padding_free and cfg.packed_attention))
        if cfg.padding_free:
            # Built padded, so TRL tokenizes and truncates to max_length as usual (it refuses padding_free=True
            # with max_length set, as it cannot truncate inside its padding-free collator), then batches are
            # collated padding-free; the check below proves examples stay apart with this attention.
            shared = packed and cfg.shared_prefix
            trainer.data_collator = (speed.shared_prefix_collator if shared else speed.padding_free_collator)(tokenizer)
            first = trainer.train_dataset.select(range(min(4, len(trainer.train_dataset)))).to_list()
            speed.check_packed_attention(trainer.model, first, trainer.data_collator)
        bf16_base = speed.use_bf16(cfg.precision) and cfg.bf16_base
        n_bf16 = stack.enter_context(speed.bf16_lora_base(model, work_dir, bf16_base))
        if n_bf16:
            log.info("%d frozen LoRA base weights held in bf16 while training", n_bf16)
        stack.enter_context(speed.answer_only_lm_head(cfg.answer_only_lm_head))
        return common.fit(trainer, ckpt_dir)


def _metrics(trainer, result, seconds: float, resume: bool, timer, exact_match_seconds: float) -> dict:
    """The stage's metrics: :func:`common.run_metrics`, real-token throughput of the optimizer steps, timings,
    :func:`common.history_metrics`, and the peak RSS up to the last optimizer step."""
    epochs_done = trainer.state.epoch or 0
    trained_tokens = speed.real_tokens(trainer.train_dataset) * epochs_done
    step_seconds = timer.seconds
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    return {
        **common.run_metrics(trainer, result, seconds, resume),
        # real (non-pad) tokens per second of optimizer-step time (edgeft.finetune.speed)
        "tokens_per_second": trained_tokens / step_seconds if step_seconds > 0 and not resume else None,
        "step_seconds": step_seconds,
        "exact_match_seconds": exact_match_seconds,
        "trained_tokens": trained_tokens,
        **common.history_metrics(trainer, trainer.model, evals),
        "steps_peak_rss_mb": timer.peak_rss_mb,  # up to the end of the last optimizer step (before evaluation)
    }


OBJECTIVES.register("sft")(Objective("sft", "instruction tuning, chat template, loss on answers only", "causal-lm",
                                      ("prompt", "response"), train))
