"""SFT speed settings keep the loss: padding-free batches, answer-only LM head, length grouping (tiny LLaMA)."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import SYSTEM_PROMPT

torch = pytest.importorskip("torch")


def _examples(tok, n=6):
    """Chat-templated prompt/answer token ids with labels -100 on the prompt, as TRL prepares them."""
    from edgeft.data.intents import generate
    from edgeft.data.templates import conversation_text, prompt_ids

    out = []
    for r in generate(n, 1, seed=3)[0]:
        ids = tok(conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]), add_special_tokens=False).input_ids
        n_prompt = len(prompt_ids(tok, SYSTEM_PROMPT, r["prompt"]))
        out.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    assert len({len(e["input_ids"]) for e in out}) > 1, "examples must differ in length for padding to matter"
    return out


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    return tok, _examples(tok)


def _model(tiny_lm_dir, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), attn_implementation=attn,
                                                torch_dtype=torch.float32).eval()


def _batches(tok, examples):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from edgeft.finetune import speed

    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples)
    packed = speed.padding_free_collator(tok)(examples)
    return padded, packed


@pytest.mark.parametrize("attn,shared", [("sdpa", False), ("eager", False), ("packed", False), ("packed", True)])
def test_padding_free_loss_and_grads_equal_padded(tiny_lm_dir, tiny, attn, shared):
    from edgeft.finetune import speed

    tok, examples = tiny
    padded, packed = _batches(tok, examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples)  # no pad token
    assert (padded["attention_mask"] == 0).any()  # the padded batch does carry padding
    if shared:
        p = speed.shared_prefix_length(examples)
        assert p > 5  # the system prompt's tokens
        packed = speed.shared_prefix_collator(tok)(examples)
        assert packed["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples) - (len(examples) - 1) * p
    model = _model(tiny_lm_dir, "sdpa" if attn == "packed" else attn)
    if attn == "packed":
        model.config._attn_implementation = speed.register_packed_attention()
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        # use_cache=False as TRL's compute_loss passes it: with a cache, transformers skips the packed mask
        out = model(**batch, use_cache=False)
        out.loss.backward()
        mask = batch["labels"][:, 1:] != -100
        results.append((out.loss.item(), out.logits[:, :-1][mask], model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (loss_pad, z_pad, g_pad), (loss_packed, z_packed, g_packed) = results
    assert abs(loss_pad - loss_packed) < 1e-4, (loss_pad, loss_packed)
    assert (z_pad - z_packed).abs().max().item() < 1e-4  # per answer token, not only on average
    assert (g_pad - g_packed).abs().max().item() < 1e-4
    # the loss is not trivially equal: unpacked, each example alone gives a different mean
    alone = [model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]), use_cache=False).loss.item()
             for e in examples]
    assert max(abs(a - loss_pad) for a in alone) > 1e-3


def test_shared_prefix_stops_before_each_examples_first_loss_position():
    from edgeft.finetune import speed

    ex = {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, -100, 5, 6]}
    # identical examples: the prefix keeps the last prompt token (it predicts the first answer token)
    assert speed.shared_prefix_length([ex, ex]) == 3
    other = {"input_ids": [1, 2, 9, 4, 5, 6], "labels": ex["labels"]}
    assert speed.shared_prefix_length([ex, other]) == 2
    assert speed.shared_prefix_length([ex]) == 0
    short = {"input_ids": [1, 2], "labels": [-100, 2]}
    assert speed.shared_prefix_length([ex, short]) == 0
    batch = speed.shared_prefix_collator(None)([ex, ex])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 4, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 5]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 5, 6, -100, 5, 6]]
    assert speed.packed_segments(batch["position_ids"][0]) == [(0, 6, 0), (6, 9, 3)]
    with pytest.raises(ValueError, match="first example holds only 2"):
        speed.packed_segments(torch.tensor([0, 1, 5, 6]))


def test_packed_attention_check_catches_a_prefix_read_as_separate_examples(tiny_lm_dir, tiny):
    from edgeft.errors import UnsupportedError
    from edgeft.finetune import speed

    tok, examples = tiny
    model = _model(tiny_lm_dir)  # sdpa reads a segment starting at position p as a separate example
    with pytest.raises(UnsupportedError, match="padding_free: false"):
        speed.check_packed_attention(model, examples, speed.shared_prefix_collator(tok))
    with speed.use_packed_attention(model) as used:
        assert used and model.config._attn_implementation == speed.PACKED_ATTENTION
        assert speed.check_packed_attention(model, examples, speed.shared_prefix_collator(tok)) < 1e-4
    assert model.config._attn_implementation == "sdpa"  # restored: nothing saved names the function


def test_packed_attention_check_refuses_a_row_that_does_not_hold_the_examples(tiny_lm_dir):
    from edgeft.errors import UnsupportedError
    from edgeft.finetune import speed

    def merged(examples):  # one segment for two examples: their boundary is lost
        ids = sum((e["input_ids"] for e in examples), [])
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.arange(len(ids))[None]}

    with pytest.raises(UnsupportedError, match=r"segments of \[5\] tokens for 2 examples.*padding_free: false"):
        speed.check_packed_attention(_model(tiny_lm_dir), [[5, 6, 7], [8, 9]], merged)


def test_bf16_lora_base_gives_the_autocast_values_and_restores_fp32(tiny_lm_dir, tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    from edgeft.finetune import speed

    tok, examples = tiny
    batch = speed.padding_free_collator(tok)(examples)
    out = []
    for convert in (False, True):
        torch.manual_seed(0)
        lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(_model(tiny_lm_dir), lora)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with speed.bf16_lora_base(model, tmp_path, enabled=convert) as n:
            n_lora = sum(1 for name, _ in model.named_modules() if name.endswith(".base_layer"))
            assert n == (n_lora if convert else 0) and n_lora > 0
            if convert:
                assert model.base_model.model.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
                assert model.base_model.model.lm_head.weight.dtype == torch.float32  # only LoRA's frozen bases
            with torch.autocast("cpu", torch.bfloat16):
                loss = model(**batch, use_cache=False).loss
            loss.backward()
        lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
        out.append((loss.item(), lora_a.grad.clone()))
        after = dict(model.named_parameters())
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
        assert not list(tmp_path.iterdir())  # the spilled fp32 weights are cleaned up
    assert out[0][0] == out[1][0]  # autocast rounds the fp32 weights to the same bf16 values
    assert torch.equal(out[0][1], out[1][1])


def test_answer_only_lm_head_gives_the_same_loss(tiny_lm_dir, tiny):
    """TRL's fused LM head on CPU: all positions (its default) vs loss positions only (our setting)."""
    from trl.trainer.utils import add_fused_lm_head

    from edgeft.finetune import speed

    tok, examples = tiny
    padded, packed = _batches(tok, examples)
    model = _model(tiny_lm_dir)
    reference = model(**padded, use_cache=False).loss.item()
    add_fused_lm_head(model)
    for batch in (padded, packed):
        full = model(**batch, fused_lm_head=True).loss.item()
        with speed.answer_only_lm_head():
            compact = model(**batch, fused_lm_head=True).loss.item()
        assert abs(full - reference) < 1e-4 and abs(compact - reference) < 1e-4, (reference, full, compact)
    from trl.trainer import utils as trl_utils

    assert not trl_utils._use_triton(torch.device("cpu")), "the patch must be undone on exit"


@pytest.mark.parametrize("packed", [False, True])
def test_answer_only_loss_equals_the_full_logits_loss(tiny_lm_dir, tiny, packed, monkeypatch):
    """The training loss scored at the answer positions only (logits_to_keep) vs the model's own full-logits loss."""
    from edgeft.finetune import speed

    tok, examples = tiny
    batch = _batches(tok, examples)[1 if packed else 0]
    model = _model(tiny_lm_dir)
    assert speed.accepts_logits_to_keep(model)
    grads = []
    for fast in (False, True):
        model.zero_grad()
        if fast:
            loss, stats = speed.answer_only_loss(model, batch)
            assert int(stats["count"]) == int((batch["labels"][:, 1:] != -100).sum()) > 0
            assert 0 <= int(stats["correct"]) <= int(stats["count"])
        else:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    assert abs(grads[0][0] - grads[1][0]) < 1e-5, grads
    assert (grads[0][1] - grads[1][1]).abs().max().item() < 1e-5
    # gradient accumulation divides by the tokens of the whole accumulated batch
    half, _ = speed.answer_only_loss(model, batch, num_items_in_batch=2 * int(stats["count"]))
    assert abs(half.item() - grads[1][0] / 2) < 1e-5
    monkeypatch.setattr(speed, "MAX_ANSWER_LOGITS", 10)
    assert speed.answer_only_loss(model, batch) == (None, None)  # too many logits: the caller falls back


def test_packed_attention_check_catches_a_leak(tiny_lm_dir, tiny, monkeypatch):
    from transformers import masking_utils

    from edgeft.errors import UnsupportedError
    from edgeft.finetune import speed

    _, examples = tiny
    seqs = [e["input_ids"] for e in examples]
    model = _model(tiny_lm_dir)
    assert speed.check_packed_attention(model, seqs) < 1e-4
    # Simulate an attention that ignores the packed-sequence boundaries: one causal mask over the whole row.
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda pos: torch.zeros_like(pos))
    with pytest.raises(UnsupportedError, match="padding_free: false"):
        speed.check_packed_attention(model, seqs)


def _train(tiny_lm_dir, tmp_path, records, probe=None, **kw):
    from transformers import AutoTokenizer

    from edgeft.config.schema import FinetuneConfig
    from edgeft.finetune import METHODS, OBJECTIVES

    base = dict(method="lora", epochs=1, batch_size=4, max_seq_len=64, learning_rate=2e-2, warmup_ratio=0.0,
                eval_examples=0, early_stopping=None, lora={"r": 8, "alpha": 16}, precision="fp32")
    cfg = FinetuneConfig(**{**base, **kw})
    method = METHODS.get("lora")
    if probe is not None:
        method = dataclasses.replace(method, callbacks=lambda model, c: [probe])
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    torch.manual_seed(0)
    model = method.prepare(method.load_model(tiny_lm_dir, cfg, "causal-lm"), cfg)
    train, ev = records
    return OBJECTIVES.get("sft").train(model, tok, method, train, ev, cfg, tmp_path / "out", tmp_path / "work",
                                       SYSTEM_PROMPT)


@pytest.fixture(scope="module")
def records():
    from edgeft.data.intents import generate

    return generate(16, 4, seed=1)


def test_training_padding_free_matches_padded(tiny_lm_dir, tmp_path, records):
    runs = {pf: _train(tiny_lm_dir, tmp_path / str(pf), records, padding_free=pf,
                       answer_only_lm_head=pf) for pf in (False, True)}
    first = [runs[pf]["loss_history"][0]["loss"] for pf in (False, True)]
    assert abs(first[0] - first[1]) <= 1.5e-4, first  # logged losses are rounded to 4 decimals
    ev = [runs[pf]["eval_history"][-1]["eval_loss"] for pf in (False, True)]
    assert abs(ev[0] - ev[1]) < 1e-3 * abs(ev[0]), ev
    assert runs[True]["trained_tokens"] == runs[False]["trained_tokens"] > 0
    assert runs[True]["tokens_per_second"] > 0 and runs[True]["step_seconds"] > 0


@pytest.mark.parametrize("padding_free", [False, True])
def test_group_by_length_keeps_all_examples(tiny_lm_dir, tmp_path, records, padding_free):
    from transformers import TrainerCallback

    from edgeft.finetune import speed

    class Probe(TrainerCallback):
        """Reads one pass of the training dataloader: every example, as token ids, and the batches' lengths."""

        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            self.seqs, self.spreads = [], []
            for batch in train_dataloader:
                ids = batch["input_ids"]
                if "position_ids" in batch:  # padding-free: one row; an example may continue a shared prefix
                    row = ids[0].tolist()
                    rows = [row[:p] + row[a:b] for a, b, p in speed.packed_segments(batch["position_ids"][0])]
                else:
                    rows = [r[m.bool()].tolist() for r, m in zip(ids, batch["attention_mask"])]
                self.seqs += rows
                self.spreads.append(max(map(len, rows)) - min(map(len, rows)))

    seen = {}
    for grouped in (False, True):
        probe = Probe()
        _train(tiny_lm_dir, tmp_path / str(grouped), records, probe=probe, max_steps=1, padding_free=padding_free,
               group_by_length=grouped)
        seen[grouped] = probe
    train, _ = records
    assert len(seen[True].seqs) == len(seen[False].seqs) == len(train)
    assert sorted(seen[True].seqs) == sorted(seen[False].seqs)  # the same examples, each exactly once
    assert sum(seen[True].spreads) < sum(seen[False].spreads)  # and grouped by length


def test_training_with_bf16_lora_base_and_shared_prefix(tiny_lm_dir, tmp_path, records):
    """The fast defaults under bf16 autocast: trains, evaluates (exact match decodes under autocast too)."""
    m = _train(tiny_lm_dir, tmp_path, records, precision="bf16", eval_examples=2)
    assert m["steps"] == 4 and m["tokens_per_second"] > 0
    assert m["eval_history"] and "eval_exact_match" in m["eval_history"][-1]
    fp32 = _train(tiny_lm_dir, tmp_path / "fp32", records, eval_examples=2)
    assert abs(m["eval_history"][-1]["eval_loss"] - fp32["eval_history"][-1]["eval_loss"]) < 0.05


@pytest.mark.parametrize("chunked", [False, True])
def test_training_steps_score_answers_through_logits_to_keep_on_cpu(tiny_lm_dir, tmp_path, records, monkeypatch,
                                                                     chunked):
    from edgeft.finetune import speed

    calls = []
    real = speed.answer_only_loss
    monkeypatch.setattr(speed, "answer_only_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = _train(tiny_lm_dir, tmp_path, records, max_steps=2, chunked_lm_head=chunked)
    assert m["steps"] == 2 and len(calls) == (0 if chunked else 2)
    assert all(h["loss"] > 0 for h in m["loss_history"])
