"""Fine-tuning test helpers: tiny models per task and tiny training records per objective.

``TINY_DATA[objective] = factory(n) -> records`` gives a few records with the objective's
``fields``; ``TINY_CONFIG[objective]`` holds the FinetuneConfig keys it needs besides the defaults
of the matrix. An objective without a factory gets :func:`generic_records`, built from its
``fields`` (and skipped, saying which field is missing, when a field has no generic value).

pytest imports this file as the module ``conftest`` while tests/finetune is collected, which
would hide tests/conftest.py from the ``from conftest import ...`` lines of other test files; the
module ``__getattr__`` below forwards every other name to tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import pytest

_ROOT = Path(__file__).resolve().parents[1] / "conftest.py"
_spec = importlib.util.spec_from_file_location("_edgeft_tests_root_conftest", _ROOT)
root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root)


def __getattr__(name: str):  # PEP 562: `from conftest import X` finds tests/conftest.py's names too
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(root, name)


SYSTEM_PROMPT = root.SYSTEM_PROMPT


# --------------------------------------------------------------------------- tiny records per objective


def sft_records(n: int) -> list[dict]:
    """The same (prompt, response) pair repeated: a few steps at a high LR must fit it."""
    from edgeft.data.intents import generate

    train, _ = generate(max(n, 2), 1, seed=3)
    return [{"prompt": r["prompt"], "response": r["response"]} for r in train[:n]]


def classify_records(n: int) -> list[dict]:
    return root.sentiment_records(n, seed=0)


def clm_records(n: int) -> list[dict]:
    """Raw-text records, each several intent lines long (a few blocks of tokens in all)."""
    from edgeft.data.intents import generate

    train, _ = generate(8 * max(n, 1), 1, seed=4)
    return [{"text": "".join(f"{r['prompt']} -> {r['response']}\n" for r in train[8 * i:8 * i + 8])} for i in range(n)]


def dpo_records(n: int) -> list[dict]:
    from edgeft.data.preferences import generate

    return generate(max(n, 1), 1, seed=3)[0][:n]


def multitask_records(n: int) -> list[dict]:
    """Two tasks (see TINY_CONFIG["multitask"]): intent JSON, and the first word of the utterance."""
    recs = sft_records(n)
    return [dict(r, task="intents") if i % 2 == 0 else {"task": "verb", "prompt": r["prompt"],
                                                         "response": r["prompt"].split()[0]}
            for i, r in enumerate(recs)]


TINY_DATA: dict[str, Callable[[int], list[dict]]] = {
    "sft": sft_records,
    "classify": classify_records,
    "clm": clm_records,
    "dpo": dpo_records,
    "distill": sft_records,
    "multitask": multitask_records,
    "grpo": sft_records,
    "reward": dpo_records,
}

TINY_CONFIG: dict[str, dict] = {
    # the chat-formatted prompts take ~50 tokens; the chosen/rejected answers must differ inside max_seq_len
    "dpo": {"max_seq_len": 96},
    # a random model never writes JSON (the programmatic rewards are all 0: no advantage, no gradient); the judge
    # (a frozen copy of the start) gives every completion a different score
    "grpo": {"grpo": {"rewards": [{"name": "judge", "model": "start"}], "num_generations": 4,
                      "max_completion_length": 8, "eval_examples": 0}},
    "multitask": {"multitask": {"tasks": [
        {"name": "intents", "generated": {}, "system_prompt": SYSTEM_PROMPT},
        {"name": "verb", "generated": {}, "system_prompt": "Say the first word.", "metric": "accuracy"}]}},
}

# Generic values for fields an objective may declare; anything else needs a TINY_DATA entry.
_GENERIC = {
    "prompt": lambda i: f"set a timer for {i + 2} minutes",
    "response": lambda i: '{"intent": "timer", "minutes": %d}' % (i + 2),
    "chosen": lambda i: '{"intent": "timer", "minutes": %d}' % (i + 2),
    "rejected": lambda i: "sorry, I cannot do that",
    "text": lambda i: f"the film was very good and the plot {i} was quite fun.",
    "label": lambda i: str(i % 2),
}


def generic_records(objective, n: int) -> list[dict]:
    missing = [f for f in objective.fields if f not in _GENERIC]
    if missing:
        pytest.skip(f"objective {objective.name!r} needs field(s) {', '.join(missing)} that have no generic tiny "
                    f"value: add TINY_DATA[{objective.name!r}] in tests/finetune/conftest.py")
    return [{f: _GENERIC[f](i) for f in objective.fields} for i in range(n)]


def tiny_records(objective, n: int) -> list[dict]:
    factory = TINY_DATA.get(objective.name)
    return factory(n) if factory is not None else generic_records(objective, n)


# --------------------------------------------------------------------------- tiny models per task


def build_tiny_cls_bert(out: Path) -> Path:
    """A saved tiny random BERT (hidden 32, 2 layers, no dropout) + WordPiece tokenizer, for the seq-cls task."""
    import torch
    from transformers import BertConfig, BertModel

    tok = root.build_bert_tokenizer(out)
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=len(tok), max_position_embeddings=64, pad_token_id=0,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 initializer_range=0.2))  # wider init: [CLS] features that differ per text
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_cls_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(2)
    return build_tiny_cls_bert(tmp_path_factory.mktemp("tiny-cls-bert") / "model")


@pytest.fixture(scope="session")
def tiny_model_dirs(tiny_lm_dir, tiny_cls_dir) -> dict[str, Path]:
    """Task -> saved tiny model: a LLaMA for causal-lm, a BERT for seq-cls."""
    return {"causal-lm": tiny_lm_dir, "seq-cls": tiny_cls_dir}

