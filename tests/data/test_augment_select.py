"""Data helpers: ``augment`` (a teacher labels inputs) and ``select`` (uncertainty ranking) on tiny models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SYSTEM_PROMPT, build_tokenizer


def _write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_augment_writes_reviewable_teacher_examples(tiny_lm_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.data.augment import augment, complete
    from edgeft.data.readers import read_records

    inputs = _write_lines(tmp_path / "inputs.txt", ["set a timer for 3 minutes", "turn on the kitchen lights",
                                                     "", "play some adele"])
    out = tmp_path / "aug" / "augmented.jsonl"
    res = augment(str(tiny_lm_dir), inputs, out, SYSTEM_PROMPT, max_new_tokens=6)
    rows = read_records(out)
    assert res["n"] == len(rows) == 3  # the blank line is not an input
    assert [r["prompt"] for r in rows] == ["set a timer for 3 minutes", "turn on the kitchen lights", "play some adele"]
    assert all(r["source"] == "augment" and r["teacher"] == res["teacher"] for r in rows)
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temp file
    # the responses are the teacher's greedy answers, rendered like fine-tuning renders prompts
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, torch_dtype=torch.float32).eval()
    assert [r["response"] for r in rows] == complete(model, tok, [r["prompt"] for r in rows], SYSTEM_PROMPT, 6)


def test_augment_reads_a_field_of_a_record_file_and_keeps_other_fields(tiny_lm_dir, tmp_path):
    from edgeft.data.augment import augment
    from edgeft.data.readers import read_records
    from edgeft.errors import DataError

    src = tmp_path / "pool.jsonl"
    src.write_text(json.dumps({"utterance": "wake me up at 7:00 am", "id": 7}) + "\n")
    augment(str(tiny_lm_dir), src, tmp_path / "o.jsonl", SYSTEM_PROMPT, field="utterance", max_new_tokens=3)
    (row,) = read_records(tmp_path / "o.jsonl")
    assert row["prompt"] == "wake me up at 7:00 am" and row["id"] == 7
    with pytest.raises(DataError, match="missing field 'prompt'"):
        augment(str(tiny_lm_dir), src, tmp_path / "p.jsonl", SYSTEM_PROMPT)


def test_uncertainty_measures():
    import torch

    from edgeft.data.select import uncertainty

    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01], [0.5, 0.5, 0.0, 0.0]])
    ent = uncertainty(p, "entropy")
    assert ent[0].item() == pytest.approx(math.log(4))
    assert ent[1].item() < ent[2].item() < ent[0].item()
    mar = uncertainty(p, "margin")
    assert mar.tolist() == pytest.approx([1.0, 0.04, 1.0])


@pytest.fixture(scope="module")
def shaped_lm(tmp_path_factory):
    """A tiny LM whose next-token distribution is a function of the last token only, built so that:

    the blocks write nothing to the residual stream (o_proj/down_proj zero), the output head is the
    embedding matrix scaled up (confident: the last token predicts itself), and one token, ``~``,
    has a zero embedding, so after it the logits are all zero: the uniform, maximum-entropy distribution.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    flat = tok("~", add_special_tokens=False).input_ids
    assert len(flat) == 1
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[flat[0]] = 0.0
        model.lm_head.weight.copy_(model.model.embed_tokens.weight * 20)
    out = tmp_path_factory.mktemp("shaped") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("strategy", ["entropy", "margin"])
def test_select_ranks_the_high_entropy_example_first(shaped_lm, tmp_path, strategy):
    from edgeft.data.readers import read_records
    from edgeft.data.select import select

    pool = _write_lines(tmp_path / "pool.txt", ["set a timer", "play some adele", "what is this ~",
                                                 "turn on the lights", "text mom"])
    res = select(str(shaped_lm), pool, tmp_path / "picked.jsonl", top_k=3, strategy=strategy, template=False)
    rows = read_records(tmp_path / "picked.jsonl")
    assert [r["rank"] for r in rows] == [1, 2, 3] and res["pool"] == 5 and res["selected"] == 3
    assert rows[0]["prompt"] == "what is this ~"
    assert rows[0]["score"] > rows[1]["score"] >= rows[2]["score"]
    if strategy == "entropy":  # the uniform distribution over the whole vocabulary
        from transformers import AutoConfig

        assert rows[0]["score"] == pytest.approx(math.log(AutoConfig.from_pretrained(shaped_lm).vocab_size), rel=1e-4)
    assert all(r["strategy"] == strategy and r["scope"] == "next-token" for r in rows)


def test_select_answer_scope_and_classifier_labels(shaped_lm, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from edgeft.data.readers import read_records
    from edgeft.data.select import select

    pool = _write_lines(tmp_path / "pool.txt", ["set a timer", "what is this ~", "text mom"])
    select(str(shaped_lm), pool, tmp_path / "a.jsonl", top_k=3, scope="answer", template=False)
    rows = read_records(tmp_path / "a.jsonl")
    assert rows[0]["prompt"] == "what is this ~" and rows[0]["scope"] == "answer"

    # a classifier built the same way: uniform over its 3 labels after "~", confident elsewhere
    tok = build_tokenizer()
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), num_labels=3, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    clf = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        clf.model.layers[0].self_attn.o_proj.weight.zero_()
        clf.model.layers[0].mlp.down_proj.weight.zero_()
        clf.model.embed_tokens.weight[tok("~", add_special_tokens=False).input_ids[0]] = 0.0
        clf.score.weight.mul_(200)
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    res = select(str(tmp_path / "clf"), pool, tmp_path / "c.jsonl", top_k=1)
    (top,) = read_records(tmp_path / "c.jsonl")
    assert top["prompt"] == "what is this ~" and top["scope"] == "labels" and res["scope"] == "labels"
    assert top["score"] == pytest.approx(math.log(3), rel=1e-4)


def test_data_cli_select_and_augment(shaped_lm, tiny_lm_dir, tmp_path):
    pool = _write_lines(tmp_path / "pool.txt", ["set a timer", "what is this ~"])
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent / "edgeft"), "-q", "data", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("select", "--model", str(shaped_lm), "--pool", str(pool), "--out", str(tmp_path / "s.jsonl"),
            "--top-k", "1", "--no-template")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["selected"] == 1
    assert json.loads((tmp_path / "s.jsonl").read_text())["prompt"] == "what is this ~"
    r = run("augment", "--model", str(tiny_lm_dir), "--inputs", str(pool), "--out", str(tmp_path / "a.jsonl"),
            "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 2
