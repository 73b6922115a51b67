"""Objective ``classify`` on a tiny random BERT: metrics, learning a separable toy task, labels and reload."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import build_tiny_bert, sentiment_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


def _cfg(**kw):
    from edgeft.config.schema import FinetuneConfig

    base = {"method": "lora", "objective": "classify", "epochs": 8, "batch_size": 16, "learning_rate": 1e-2,
            "max_seq_len": 32, "lora": {"r": 8, "alpha": 16}, "early_stopping": None, "warmup_ratio": 0.0}
    return FinetuneConfig.model_validate({**base, **kw})


def test_scores_accuracy_and_macro_f1():
    from edgeft.metrics.classify import scores

    s = scores(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 2)
    assert s["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 1 -> 4/6
    assert s["macro_f1"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert scores(np.array([2, 2]), np.array([2, 2]), 3)["macro_f1"] == pytest.approx(1.0)


def test_label_list_orders_ints_numerically():
    from edgeft.finetune.objectives.classify import label_list

    assert label_list([{"label": "10"}, {"label": "2"}, {"label": 1}]) == ["1", "2", "10"]
    assert label_list([{"label": "pos"}, {"label": "neg"}]) == ["neg", "pos"]


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory):
    from edgeft.finetune import finetune

    out = tmp_path_factory.mktemp("classify")
    metrics = finetune(tiny_bert_dir, sentiment_records(128, seed=1), sentiment_records(32, seed=2), out / "ft",
                       _cfg())
    return out, metrics


def test_learns_separable_task(trained):
    _, m = trained
    assert m["objective"] == "classify" and m["labels"] == ["neg", "pos"]
    losses = [h["loss"] for h in m["loss_history"]]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
    assert m["eval_accuracy"] >= 0.9 and m["eval_macro_f1"] >= 0.9, m
    assert all("eval_accuracy" in h and "eval_macro_f1" in h for h in m["eval_history"])
    assert m["steps"] == 64 and 0 < m["trainable_params"] < m["total_params"]
    assert m["tokens_per_second"] > 0 and m["peak_rss_mb"] > 0


def test_saved_adapter_records_labels_and_reloads_to_same_logits(trained, tiny_bert_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.exporters.onnx_encoder import module_logits, torch_logits
    from edgeft.metrics.classify import scores
    from edgeft.merge import merge

    out, m = trained
    adapter = out / "ft" / "adapter"
    cfg = json.loads((adapter / "config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}
    ev = sentiment_records(32, seed=2)
    texts = [r["text"] for r in ev]
    tok = AutoTokenizer.from_pretrained(str(adapter))
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir),
                                                              config=AutoConfig.from_pretrained(str(adapter)))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    logits = module_logits(model, tok, texts, 32)
    gold = np.array([0 if r["label"] == "neg" else 1 for r in ev])
    # the reloaded adapter reproduces the trained model's eval accuracy exactly
    assert scores(logits.argmax(-1), gold, 2)["accuracy"] == pytest.approx(m["eval_accuracy"])
    rep = merge(adapter, tmp_path / "merged", base_model=tiny_bert_dir, sample_texts=texts[:4])
    assert rep["passed"] and rep["max_abs_logit_diff"] < 1e-4
    merged = torch_logits(tmp_path / "merged", tok, texts, 32)
    assert np.abs(merged - logits).max() < 1e-4
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert torch.is_tensor(torch.as_tensor(merged))


def test_head_size_mismatch_is_a_config_error(tiny_bert_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.finetune import finetune

    three = [dict(r, label=["a", "b", "c"][i % 3]) for i, r in enumerate(sentiment_records(12))]
    with pytest.raises(ConfigError, match="num_labels: 3"):
        finetune(tiny_bert_dir, three, three[:3], tmp_path / "ft", _cfg(max_steps=1))
