"""GRPO: group relative policy optimization on prompt/response records (TRL GRPOTrainer).

For each prompt the policy samples ``finetune.grpo.num_generations`` completions; each is scored by
the weighted sum of the recipe's rewards (:mod:`edgeft.finetune.rewards`: JSON validity, slot
match against the record's reference ``response``, a length penalty, a judge model, a learned
reward model), and the advantage of a completion is its reward minus its group's mean (divided by
the group's std with ``scale_rewards: group``). No value model is trained. ``finetune.batch_size``
counts prompts per optimizer step, so a step trains on ``batch_size * num_generations``
completions. Prompts are given to TRL in conversational form (the chat template is applied; the
completion is the assistant turn).

Starting point: RL on a base model that never writes the JSON gets no reward signal, so GRPO is
meant to continue an SFT adapter: ``finetune.init_adapter`` names the sft run's adapter folder,
whose weights are loaded into the freshly prepared adapter before training (the finetune stage does
this for every objective; the settings must match). With ``beta > 0`` TRL keeps a frozen copy of
that adapter as the reference policy; it is dropped before saving.

Reported: greedy exact match and JSON validity on ``grpo.eval_examples`` eval records before and
after training (:func:`edgeft.finetune.objectives.sft.exact_match`), the mean of each reward at the
first and last logged step and over the run, and rollouts per second: completions sampled per
second of generation time (``transformers.generate`` inside TRL, timed around its generation call).

Rollout backend: TRL 1.16 generates with ``transformers.generate`` on the training model, with
vLLM (CUDA only), or with a user ``rollout_func(prompts, trainer)`` returning prompt/completion ids
and log-probs (experimental). An ONNX Runtime backend would plug in through ``rollout_func``, but
the policy changes at every optimizer step, so each step would first have to merge the adapter and
re-export the decoder graph (tens of seconds on CPU for SmolLM2-135M, longer than the step's own
generation) or stream the LoRA weights into the session as inputs, which the exported graphs do
not take. It is not implemented: rollouts use ``transformers.generate`` with the KV cache.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from edgeft.data.templates import messages
from edgeft.errors import ConfigError
from edgeft.finetune import rewards as reward_fns
from edgeft.finetune.objectives import common
from edgeft.finetune.registry import OBJECTIVES, Objective

log = logging.getLogger(__name__)


def _dataset(records: list[dict], system_prompt: str) -> list[dict]:
    return [{"prompt": messages(system_prompt, r["prompt"]), "response": r["response"]} for r in records]


def frozen_start(model):
    """A factory for a frozen, merged copy of ``model`` as it is now (judge ``model: start``)."""
    def make():
        m = copy.deepcopy(model)
        if hasattr(m, "merge_and_unload"):
            m = m.merge_and_unload()
        for p in m.parameters():
            p.requires_grad_(False)
        return m.eval()

    return make


def _lm_inputs_only(tok):
    """``tok`` without token_type_ids in its outputs (TRL would pass them to ``generate`` as extra model inputs,
    which a causal LM refuses); a shallow copy, the saved tokenizer stays as it was."""
    if "token_type_ids" not in tok.model_input_names:
        return tok
    out = copy.copy(tok)
    out.model_input_names = [n for n in tok.model_input_names if n != "token_type_ids"]
    return out


def _timed_trainer():
    """GRPOTrainer counting the completions it samples and the seconds its generation calls take."""
    from trl import GRPOTrainer

    class Trainer(GRPOTrainer):
        rollouts = 0
        rollout_seconds = 0.0

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            t = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.rollout_seconds += time.perf_counter() - t
            self.rollouts += len(out[0])
            return out

    return Trainer


def _args(cfg, ckpt_dir: Path, n_train: int, weights: list[float]):
    from trl import GRPOConfig

    g = cfg.grpo
    kw = common.args_kwargs(cfg, ckpt_dir, n_train)
    kw.update(
        per_device_train_batch_size=cfg.batch_size * g.num_generations,  # TRL counts completions
        per_device_eval_batch_size=cfg.batch_size * g.num_generations,
        eval_strategy="no",  # scored by greedy exact match before and after instead (a sampled eval costs rollouts)
        load_best_model_at_end=False,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        beta=g.beta,
        temperature=g.temperature,
        top_p=g.top_p,
        num_iterations=g.num_iterations,
        scale_rewards=g.scale_rewards,
        reward_weights=weights,
        log_completions=False,
        logging_steps=1,
    )
    return GRPOConfig(**kw)


def reward_summary(history: list[dict]) -> dict:
    """Per reward (and the weighted total ``reward``): its mean at the first and last logged step and over the run."""
    rows = [h for h in history if "reward" in h]
    names = ["reward"] + sorted({k[len("rewards/"):-len("/mean")] for h in rows for k in h
                                 if k.startswith("rewards/") and k.endswith("/mean")})
    out = {}
    for n in names:
        key = n if n == "reward" else f"rewards/{n}/mean"
        vals = [h[key] for h in rows if key in h]
        if vals:
            out[n] = {"first": vals[0], "last": vals[-1], "mean": sum(vals) / len(vals)}
    return out


def _drop_ref_adapter(model) -> None:
    """TRL's frozen reference copy (beta > 0 with a PEFT adapter) is not part of the result."""
    if "ref" in (getattr(model, "peft_config", None) or {}):
        model.set_adapter("default")
        model.delete_adapter("ref")


def train(model, tokenizer, method, train_records, eval_records, cfg, out_dir: Path, work_dir: Path,
          system_prompt: str) -> dict:
    from datasets import Dataset

    from edgeft.finetune.objectives.sft import exact_match

    g = cfg.grpo
    n_prompts = cfg.batch_size * cfg.grad_accum
    if not train_records:
        raise ConfigError("grpo: no training records")
    em_records = eval_records[: g.eval_examples]
    before = exact_match(model, tokenizer, em_records, system_prompt, g.max_completion_length) if em_records else {}
    ctx = reward_fns.RewardContext(tokenizer, system_prompt, frozen_start(model))
    fns, weights = reward_fns.build(g.rewards, ctx)
    ckpt_dir = work_dir / "checkpoints"
    trainer = _timed_trainer()(
        model=model,
        reward_funcs=fns,
        args=_args(cfg, ckpt_dir, len(train_records), weights),
        train_dataset=Dataset.from_list(_dataset(train_records, system_prompt)),
        processing_class=_lm_inputs_only(tokenizer),
        callbacks=common.callbacks(method, model, cfg, _reward_log()),
    )
    log.info("grpo: %d prompts x %d completions per step, rewards %s", n_prompts, g.num_generations,
             ", ".join(f"{s.name}x{s.weight:g}" for s in g.rewards))
    result, seconds, resume = common.fit(trainer, ckpt_dir)
    _drop_ref_adapter(trainer.model)
    after = exact_match(trainer.model, tokenizer, em_records, system_prompt, g.max_completion_length) if em_records else {}
    common.save(trainer, trainer.model, tokenizer, method, out_dir)
    out = {**common.run_metrics(trainer, result, seconds, resume),
           **common.history_metrics(trainer, trainer.accelerator.unwrap_model(trainer.model), [])}
    rollouts, gen_s = trainer.rollouts, trainer.rollout_seconds
    out.update({
        "exact_match_before": before.get("exact_match"), "json_valid_before": before.get("json_valid"),
        "eval_exact_match": after.get("exact_match"), "eval_json_valid": after.get("json_valid"),
        "exact_match_examples": len(em_records),
        "rewards": reward_summary(trainer.state.log_history),
        "rollouts": rollouts, "rollout_seconds": gen_s,
        "rollouts_per_second": rollouts / gen_s if gen_s > 0 else None,
        "num_generations": g.num_generations, "beta": g.beta, "init_adapter": cfg.init_adapter,
        "rollout_backend": "transformers.generate",
    })
    if before:
        log.info("grpo: exact match %.3f -> %.3f on %d eval examples; %.2f rollouts/s", before["exact_match"],
                 after["exact_match"], len(em_records), out["rollouts_per_second"] or 0.0)
    return out


def _reward_log():
    """One line per step with the mean total reward (TRL logs it as ``reward``)."""
    from transformers import TrainerCallback

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                parts = "  ".join(f"{k[8:-5]} {v:.3f}" for k, v in logs.items()
                                  if k.startswith("rewards/") and k.endswith("/mean"))
                log.info("step %d  reward %.3f  %s", state.global_step, logs["reward"], parts)

    return RewardLog()


OBJECTIVES.register("grpo")(Objective("grpo", "reinforcement learning from rewards on sampled answers (TRL GRPO)",
                                       "causal-lm", ("prompt", "response"), train))
