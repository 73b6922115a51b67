"""Every registered fine-tuning METHOD x every registered OBJECTIVE on tiny random models built in code.

The cases are read from the registries at collection time, so a newly registered method or
objective is tested without touching this file (its tiny records come from ``TINY_DATA`` in
tests/finetune/conftest.py). The model is a 2-block LLaMA (hidden 64) for causal-LM objectives and a
2-block BERT (hidden 32) for sequence classification. Each case trains a few steps at a high LR on
the same small batch and checks:

* the loss went down;
* exactly the intended parameters receive gradients (the union over steps of parameters with a
  non-zero gradient equals the method's intended set, and no step gives a gradient outside it);
* the saved result reloads and reproduces the trained model's logits (max |diff| < 1e-4);
* mergeable methods merge (adapter folded, or whole weights copied) with parity, and the merged model
  reproduces the trained one; refusing methods raise UnsupportedError from merge.

A method/objective pair that cannot work together raises UnsupportedError, and the case is skipped
with that message.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import SYSTEM_PROMPT, tiny_records
from edgeft.errors import UnsupportedError
from edgeft.finetune import METHODS, OBJECTIVES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# text objectives on the tiny LLaMA / BERT; image-classify has its own models and tests (test_image_classify.py)
CASES = [(m, o) for m in METHODS.names() for o in OBJECTIVES.names() if OBJECTIVES.get(o).task != "image-cls"]

# Learning rates that move each method family within 6 steps on the tiny models.
LR = {"full": 3e-3, "freeze": 5e-3, "gradual-unfreeze": 5e-3, "bitfit": 3e-2, "ia3": 5e-2, "prompt-tuning": 5e-2,
      "prefix-tuning": 3e-2, "p-tuning": 3e-2, "adapter": 1e-2}
# The tiny BERT classifier (built with a wide init so its [CLS] features differ per text).
LR_CLS = {"full": 3e-3, "freeze": 5e-3, "gradual-unfreeze": 5e-3}
# distill's student starts next to its teacher (KL ~1e-3): Adam's normalized step on the tied embedding at 5e-3
# overshoots it, so block-freezing methods get a smaller one there.
LR_PAIR = {("freeze", "distill"): 1e-3, ("gradual-unfreeze", "distill"): 1e-3}
# Pairs that fail for reasons in the objective or TRL, not in the method (see the reason); xfail, not strict,
# so a fix shows up as XPASS.
_FUSED = ("TRL's DPO/multitask path calls model(..., fused_lm_head=True); on a non-PEFT model trained after an sft "
          "case in the same process the fused-LM-head patch is not in effect (state left by the earlier Trainer; each "
          "passes alone, and a real run has one Trainer per process)")
KNOWN = {
    **{(m, "dpo"): _FUSED for m in ("full", "freeze", "gradual-unfreeze", "bitfit", "adapter")},
    **{(m, "multitask"): _FUSED for m in ("full", "freeze", "gradual-unfreeze", "bitfit", "adapter", "prefix-tuning")},
}
# Objectives whose training loss is not expected to fall: GRPO's loss is the advantage-weighted probability ratio,
# about 0 at every step by construction (advantages are centred per prompt group, the ratio is 1 on fresh
# rollouts); that GRPO raises its reward is tested in tests/finetune/test_rl.py. The other checks apply.
NO_LOSS_TREND = {"grpo"}
# Objectives with a pairwise loss on one score per sequence (reward: -log sigmoid(r(chosen) - r(rejected))): the
# score layer's bias cancels in the difference: its gradient is 0 up to rounding, so it is neither expected nor
# counted.
PAIRWISE = {"reward"}
STEPS = 6
PARITY = 1e-4


def cfg_for(method: str, objective: str):
    from conftest import TINY_CONFIG
    from edgeft.config.schema import FinetuneConfig

    lr = LR_CLS.get(method, 1e-2) if OBJECTIVES.get(objective).task == "seq-cls" else LR.get(method, 1e-2)
    lr = LR_PAIR.get((method, objective), lr)
    kw = dict(method=method, objective=objective, epochs=STEPS, batch_size=4, max_seq_len=48, learning_rate=lr, lr_scheduler="constant", warmup_ratio=0.0, eval_examples=0,
              early_stopping=None, save_total_limit=1, lora={"r": 4, "alpha": 8}, freeze={"top_blocks": 1},
              unfreeze={"start": 1, "every_steps": 3}, prompt={"num_virtual_tokens": 4, "encoder_hidden_size": 16},
              adapter={"reduction_factor": 4})
    kw.update(TINY_CONFIG.get(objective, {}))
    return FinetuneConfig(**kw)


# --------------------------------------------------------------------------- the intended trainable sets


def _block(name: str) -> int | None:
    m = re.search(r"(?:layers|layer)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _head(name: str, task: str) -> bool:
    """After the last block: final norm / tied LM head (the embedding matrix) or pooler / classifier."""
    if task == "seq-cls":
        return bool(re.search(r"(^|\.)(pooler|classifier|score)\.", name))
    return bool(re.search(r"(^|\.)(norm\.weight|lm_head\.|embed_tokens\.)", name)) and _block(name) is None


def _score_bias(name: str, task: str) -> bool:
    """The bias of the score layer itself (not the pooler's)."""
    return _new_cls_head(name, task) and name.endswith(".bias")


def _new_cls_head(name: str, task: str) -> bool:
    return task == "seq-cls" and bool(re.search(r"(^|\.)(classifier|score)\.", name))


def intended(method: str, task: str, names: list[str], step: int, n_blocks: int) -> set[str]:
    """The parameters ``method`` must train (independent of the method's code: a spec by name)."""
    def pick(pred):
        return {n for n in names if pred(n)}

    peft_head = pick(lambda n: ".modules_to_save." in n) if task == "seq-cls" else set()
    if method in ("lora", "qlora"):
        return pick(lambda n: "lora_A" in n or "lora_B" in n) | peft_head
    if method == "dora":
        return pick(lambda n: "lora_" in n) | peft_head
    if method == "ia3":
        return pick(lambda n: "ia3_l" in n) | peft_head
    if method in ("prompt-tuning", "prefix-tuning", "p-tuning"):
        return pick(lambda n: "prompt_encoder" in n) | peft_head
    if method == "adapter":
        return pick(lambda n: ".adapters.edgeft." in n or _new_cls_head(n, task))
    if method == "full":
        return set(names)
    if method == "bitfit":
        biases = pick(lambda n: n.endswith(".bias"))
        gains = biases or pick(lambda n: re.search(r"norm\.weight$", n) is not None)  # bias-free LLaMA: norm gains
        return gains | pick(lambda n: _new_cls_head(n, task))
    if method == "freeze":  # top 1 block + head
        return pick(lambda n: _block(n) == n_blocks - 1 or _head(n, task))
    if method == "gradual-unfreeze":  # start 1, one more every 3 steps
        k = min(1 + step // 3, n_blocks)
        return pick(lambda n: (_block(n) is not None and _block(n) >= n_blocks - k) or _head(n, task))
    raise AssertionError(f"method {method!r} has no intended-parameter spec in test_matrix.intended(); add one")


# --------------------------------------------------------------------------- the probe


def probe_callback(log: dict):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Records per-step gradients (before the optimizer step), logged losses and the trained model."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            nonzero, present = set(), set()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    present.add(n)
                    if float(p.grad.abs().sum()) > 0:
                        nonzero.add(n)
            log["steps"].append((state.global_step, present, nonzero, [n for n, _ in model.named_parameters()]))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log["loss"].append(float(logs["loss"]))

        def on_train_end(self, args, state, control, model=None, **kw):
            from accelerate.utils import extract_model_from_parallel

            # drop accelerate's mixed-precision forward wrapper (bf16 autocast): compare fp32 forwards
            log["model"] = extract_model_from_parallel(model, keep_fp32_wrapper=False)

    return Probe()


def _logits(model, tok, task: str):
    import torch

    text = ["set a timer for 5 minutes", "the film was good"][task == "seq-cls"]
    enc = tok([text], return_tensors="pt", add_special_tokens=task == "seq-cls")
    model.eval()
    with torch.inference_mode():
        return model(**enc).logits.float()


def _bnb_ok(model_dir, cfg, task) -> str | None:
    try:
        import torch

        m = METHODS.get("qlora").load_model(model_dir, cfg, task)
        with torch.no_grad():
            m(input_ids=torch.tensor([[5, 6, 7]]))
    except Exception as e:  # noqa: BLE001 - any failure means: bitsandbytes does not run here
        return f"bitsandbytes {cfg.qlora.bits}-bit cannot run the tiny {task} test model here: {type(e).__name__}: {e}"
    return None


def _cases():
    for m, o in CASES:
        marks = [pytest.mark.xfail(reason=KNOWN[(m, o)], strict=False)] if (m, o) in KNOWN else []
        yield pytest.param(m, o, id=f"{m}-{o}", marks=marks)


@pytest.mark.parametrize("method,objective", list(_cases()))
def test_method_x_objective(method, objective, tiny_model_dirs, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from edgeft.finetune import finetune, load_trained
    from edgeft.merge import merge

    obj = OBJECTIVES.get(objective)
    task = obj.task
    model_dir = tiny_model_dirs[task]
    cfg = cfg_for(method, objective)
    m = METHODS.get(method)
    if m.quantized_base and (why := _bnb_ok(model_dir, cfg, task)):
        pytest.skip(why)
    log = {"steps": [], "loss": [], "model": None}
    probed = dataclasses.replace(m, callbacks=lambda model, c: [*m.callbacks(model, c), probe_callback(log)])
    monkeypatch.setitem(METHODS._items, method, probed)
    train = tiny_records(obj, 4)
    ev = tiny_records(obj, 2)
    out = tmp_path / "out"
    try:
        metrics = finetune(model_dir, train, ev, out, cfg, SYSTEM_PROMPT, work_dir=tmp_path / "work")
    except UnsupportedError as e:
        pytest.skip(f"{method} x {objective}: {e}")

    # exactly the intended parameters had gradients
    assert log["steps"], "no optimizer step was observed"
    trained_any, expected_any = set(), set()
    for step, present, nonzero, names in log["steps"]:
        n_blocks = len({_block(n) for n in names if _block(n) is not None})
        want = intended(method, task, names, step, n_blocks)
        assert present <= want, f"step {step}: gradients outside the intended set: {sorted(present - want)[:8]}"
        cancelled = {n for n in names if objective in PAIRWISE and _score_bias(n, task)}  # rounding: ~0 or 0
        trained_any |= nonzero - cancelled
        expected_any |= want - cancelled
    assert trained_any == expected_any, (f"intended but never trained: {sorted(expected_any - trained_any)[:8]}; "
                                         f"trained but not intended: {sorted(trained_any - expected_any)[:8]}")

    # the loss went down
    losses = log["loss"]
    assert len(losses) >= 3, f"expected a logged loss per step, got {losses}"
    if objective not in NO_LOSS_TREND:
        assert losses[-1] < losses[0], f"{method}/{objective}: loss did not decrease: {losses}"
    assert metrics["steps"] == len(log["steps"]) >= 3

    # the saved result reloads and reproduces the trained model
    trained = log["model"]
    assert trained is not None
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    saved = out / m.produces
    assert saved.is_dir(), f"finetune wrote no {m.produces}/ folder"
    student = out / "student"  # distill: an adapter's base is the student cut from the teacher
    base = student if student.is_dir() else model_dir
    ref = _logits(trained, tok, task)
    if m.quantized_base:
        # bitsandbytes' CPU 4-bit kernels take different paths in a trained module and a freshly quantized one
        # (logits ~1e-3 apart with identical weights), so compare what was saved: the adapter tensors
        reloaded = PeftModel.from_pretrained(m.load_model(base, cfg, task), str(saved))
        mine = {n: p for n, p in trained.named_parameters() if "lora_" in n}
        back = dict(reloaded.named_parameters())
        assert mine and all(float((p - back[n]).abs().max()) == 0.0 for n, p in mine.items())
    else:
        reloaded = load_trained(saved, base)
        diff = float((_logits(reloaded, tok, task) - ref).abs().max())
        assert diff < PARITY, f"reloaded {m.produces} differs from the trained model: max |logit diff| {diff:.3g}"

    # merge: fold / copy with parity, or refuse
    samples = ["set a timer for 5 minutes", "turn on the kitchen lights"] if task == "causal-lm" else \
        ["the film was good", "a dull and boring plot"]
    if m.merge == "refuse":
        with pytest.raises(UnsupportedError, match=r"use method lora, dora or ia3"):
            merge(saved, tmp_path / "merged", base_model=base, sample_texts=samples)
        assert not (tmp_path / "merged").exists()
        return
    rep = merge(saved, tmp_path / "merged", base_model=base, tolerance=PARITY, sample_texts=samples)
    assert rep["passed"] and rep["mode"] == m.merge and rep["task"] == task
    assert rep["max_abs_logit_diff"] < PARITY
    merged = load_trained(tmp_path / "merged")
    assert not isinstance(merged, PeftModel)
    if not m.quantized_base:
        diff = float((_logits(merged, tok, task) - ref).abs().max())
        assert diff < PARITY, f"merged model differs from the trained model: max |logit diff| {diff:.3g}"
