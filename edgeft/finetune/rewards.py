"""Reward functions for objective ``grpo``: programmatic checks, a judge model and a learned reward model.

Each registered builder takes the recipe's :class:`edgeft.config.schema.RewardSpec` and a
:class:`RewardContext` and returns a function in TRL's reward-function form
``f(prompts, completions, completion_ids, response, **kw) -> list[float]`` (one score per completion;
``response`` is the record's reference answer, which TRL passes along from the dataset). The
function's ``__name__`` is the reward's name, so TRL logs ``rewards/<name>/mean`` per step.

Programmatic (verifiable) rewards, for the intent -> JSON task:

* ``json_valid``: 1 if the completion parses as a JSON object, else 0.
* ``exact_slots``: partial credit per slot. Both answers parse as JSON objects; the score is the
  number of (key, value) pairs the completion gets exactly right over the number of keys in either
  (so a missing slot, an extra slot and a wrong value each cost one); 1.0 is an exact parse, 0 an
  invalid one.
* ``length``: ``-min(1, |n - target| / target)`` with n the completion's token count and target
  ``target_tokens`` (default: the reference answer's token count): 0 at the target length, -1 at
  twice (or none of) it.

Model rewards, scored with local models only (nothing is downloaded):

* ``judge`` (RLAIF): a causal LM reads the request and the answer with the rubric and is asked
  whether the answer meets it; the score is P(Yes) / (P(Yes) + P(No)) of its next token. ``model``
  is a local folder (HF weights, a merged model, or a finetune adapter folder, reloaded with
  :func:`edgeft.finetune.load_trained`) or ``start``: a frozen copy of the policy as training starts
  (with ``finetune.init_adapter`` the SFT model grading its own RL student).
* ``reward-model`` (RLHF with a learned reward): the sequence classifier objective ``reward`` wrote
  scores the conversation (chat template, prompt + completion, as it was trained); the score is
  its single logit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from edgeft.errors import ConfigError, ModelSourceError
from edgeft.registry import Registry

log = logging.getLogger(__name__)

REWARDS: Registry[Callable[..., Callable]] = Registry("GRPO reward")


@dataclass
class RewardContext:
    """What a reward builder may need besides its spec: the tokenizer and system prompt of the policy, and a
    factory for a frozen copy of the policy as training starts (judge ``model: start``)."""

    tokenizer: Any
    system_prompt: str = ""
    start_model: Optional[Callable[[], Any]] = None
    batch_size: int = 16
    loaded: dict = field(default_factory=dict)  # models loaded once per folder


def text_of(completion) -> str:
    """A completion's text: TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def prompt_of(prompt) -> str:
    """The user request of a conversational prompt (its last user turn), or the prompt itself."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name.replace("-", "_")
    return fn


def parse_object(text: str) -> Optional[dict]:
    try:
        obj = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------- programmatic


def json_valid_score(completion: str) -> float:
    from edgeft.metrics.text import score

    return score(completion, "")["json_valid"]


def slot_score(completion: str, reference: str) -> float:
    """Exact (key, value) pairs over keys in either answer; 0 if the completion is not a JSON object."""
    pred, ref = parse_object(completion), parse_object(reference)
    if pred is None or ref is None:
        return 0.0
    keys = set(pred) | set(ref)
    if not keys:
        return 1.0
    return sum(k in pred and k in ref and pred[k] == ref[k] for k in keys) / len(keys)


def length_score(n_tokens: int, target: int) -> float:
    return -min(1.0, abs(n_tokens - target) / max(1, target))


@REWARDS.register("json_valid")
def json_valid(spec, ctx: RewardContext) -> Callable:
    def f(prompts, completions, **kw) -> list[float]:
        return [json_valid_score(text_of(c)) for c in completions]

    return _named(f, spec.name)


@REWARDS.register("exact_slots")
def exact_slots(spec, ctx: RewardContext) -> Callable:
    def f(prompts, completions, response=None, **kw) -> list[float]:
        if response is None:
            raise ConfigError("finetune.grpo.rewards: exact_slots needs the records' reference `response`; "
                              "use a prompt/response task (e.g. data.generated.generator: intents)")
        return [slot_score(text_of(c), r) for c, r in zip(completions, response)]

    return _named(f, spec.name)


@REWARDS.register("length")
def length(spec, ctx: RewardContext) -> Callable:
    tok = ctx.tokenizer

    def f(prompts, completions, completion_ids=None, response=None, **kw) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            text = text_of(c)
            n = len(completion_ids[i]) if completion_ids is not None else len(tok(text, add_special_tokens=False).input_ids)
            if spec.target_tokens is not None:
                target = spec.target_tokens
            elif response is not None:
                target = len(tok(response[i], add_special_tokens=False).input_ids) + 1  # + the end-of-turn token
            else:
                raise ConfigError("finetune.grpo.rewards: length needs target_tokens when records have no `response`")
            out.append(length_score(n, target))
        return out

    return _named(f, spec.name)


# --------------------------------------------------------------------------- model rewards


def _load_lm(folder: str, ctx: RewardContext):
    """A local causal LM (HF folder, merged model or adapter folder) and its tokenizer, frozen, loaded once."""
    from transformers import AutoTokenizer

    from edgeft.finetune.registry import load_trained

    if folder in ctx.loaded:
        return ctx.loaded[folder]
    p = Path(folder)
    if not p.is_dir():
        raise ModelSourceError(f"finetune.grpo.rewards: model folder {folder} not found; give a local model folder "
                               "(models are never downloaded here)")
    model = load_trained(p)
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for q in model.parameters():
        q.requires_grad_(False)
    ctx.loaded[folder] = (model, tok)
    return model, tok


def yes_no_ids(tok) -> tuple[int, int]:
    """The judge's answer tokens: the first token of "Yes" and of "No" (one token each in most vocabularies)."""
    ids = [tok(w, add_special_tokens=False).input_ids[:1] for w in ("Yes", "No")]
    if not all(ids) or ids[0] == ids[1]:
        raise ConfigError("finetune.grpo.rewards: the judge's tokenizer does not tell 'Yes' from 'No' by their first "
                          "token; use another judge model")
    return ids[0][0], ids[1][0]


def judge_prompt(tok, rubric: str, request: str, answer: str) -> str:
    q = (f"{rubric}\n\nRequest: {request}\nAnswer: {answer}\n\n"
         "Does the answer meet the requirement? Reply with Yes or No.")
    return tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)


def judge_scores(model, tok, texts: list[str], batch_size: int = 16) -> list[float]:
    """P(Yes) / (P(Yes) + P(No)) of the judge's next token after each prompt text."""
    import torch

    yes, no = yes_no_ids(tok)
    out = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                logits = model(**enc.to(model.device)).logits[:, -1, :].float()
            two = torch.stack([logits[:, yes], logits[:, no]], -1).softmax(-1)
            out.extend(two[:, 0].tolist())
    finally:
        tok.padding_side = side
    return out


@REWARDS.register("judge")
def judge(spec, ctx: RewardContext) -> Callable:
    if spec.model == "start":
        if ctx.start_model is None:
            raise ConfigError("finetune.grpo.rewards: judge model 'start' needs a causal-LM policy to copy")
        model, tok = ctx.start_model(), ctx.tokenizer
    else:
        model, tok = _load_lm(spec.model, ctx)
    yes_no_ids(tok)  # fail before training if the judge's tokenizer cannot answer

    def f(prompts, completions, **kw) -> list[float]:
        texts = [judge_prompt(tok, spec.rubric, prompt_of(p), text_of(c)) for p, c in zip(prompts, completions)]
        return judge_scores(model, tok, texts, ctx.batch_size)

    return _named(f, spec.name)


def load_reward_model(folder: str):
    """The reward model objective ``reward`` wrote (or its merge), frozen, and its tokenizer."""
    from transformers import AutoTokenizer

    from edgeft.finetune.registry import load_trained

    p = Path(folder)
    if not p.is_dir():
        raise ModelSourceError(f"finetune.grpo.rewards: reward-model path {folder} not found; give the folder "
                               "objective reward wrote (runs/<name>/finetune/adapter or merge/)")
    model = load_trained(p)
    if int(getattr(model.config, "num_labels", 0)) != 1:
        raise ConfigError(f"finetune.grpo.rewards: {folder} is not a reward model (num_labels "
                          f"{getattr(model.config, 'num_labels', None)}, not 1); train one with objective reward")
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    getattr(model, "get_base_model", lambda: model)().config.pad_token_id = tok.pad_token_id
    for q in model.parameters():
        q.requires_grad_(False)
    return model, tok


@REWARDS.register("reward-model")
def reward_model(spec, ctx: RewardContext) -> Callable:
    from edgeft.finetune.objectives.reward import encode, scores

    if spec.path not in ctx.loaded:
        ctx.loaded[spec.path] = load_reward_model(spec.path)
    model, tok = ctx.loaded[spec.path]

    def f(prompts, completions, **kw) -> list[float]:
        seqs = [encode(tok, ctx.system_prompt, prompt_of(p), text_of(c)) for p, c in zip(prompts, completions)]
        return scores(model, tok.pad_token_id, seqs, ctx.batch_size)

    return _named(f, spec.name)


def build(specs, ctx: RewardContext) -> tuple[list[Callable], list[float]]:
    """The reward functions and weights of ``finetune.grpo.rewards``."""
    fns = [REWARDS.get(s.name, "finetune.grpo.rewards")(s, ctx) for s in specs]
    return fns, [float(s.weight) for s in specs]
