"""``edgeft serve`` for a sequence classifier (tiny BERT through the pipeline) and an encoder (tiny BERT
exported, validated and packaged through the Python API): /v1/classify, /v1/embeddings (the openai client's
embeddings call), the request log and monitor's prediction drift."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

import edgeft
from conftest import build_tiny_bert, sentiment_records, write_recipe
from serve_support import Server, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("serve-cls")
    model = build_tiny_bert(root / "model")
    tsv = root / "toy.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'pos')}\n"
                                                 for r in sentiment_records(160, seed=1)))
    recipe = write_recipe(root / "tiny-cls.yaml", {
        "name": "tiny-cls", "version": "0.0.1", "description": "Tiny random BERT classifier (test fixture).",
        "model": str(model),
        "data": {"files": {"train": str(tsv), "text_field": "sentence", "label_field": "label", "n_eval": 32,
                           "label_names": {"0": "negative", "1": "positive"}, "seed": 3}},
        "finetune": {"method": "lora", "objective": "classify", "epochs": 8, "batch_size": 16, "learning_rate": 1e-2,
                     "max_seq_len": 16, "lora": {"r": 8, "alpha": 16}, "early_stopping": None, "warmup_ratio": 0.0},
        "export": {"preset": "onnx-cls", "static_shapes": {"batch": 1, "seq": 16}},
        "quantize": [{"name": "int8-dynamic", "scheme": "int8-dynamic", "max_accuracy_drop": 0.5}],
        "validate": {"devices": ["host"], "require": ["host"], "eval_examples": 32,
                     "latency": {"warmup": 0, "repeats": 2},
                     "budgets": {"accuracy": {"max_degradation": 0.5}, "erased_margin": 0.0}},
        "package": {"tarball": False, "intended_use": "tests", "limitations": "toy data"},
    })
    return edgeft.run(recipe, runs_root=root / "runs")


def test_classifier_bundle_serves_probabilities_and_logs_them(cls_run, tmp_path):
    stats = json.loads((cls_run.bundle / "reference_stats.json").read_text())
    assert stats["kind"] == "classifier" and set(stats["labels"]) == {"negative", "positive"}
    with Server(cls_run.bundle, "--log", str(tmp_path / "log")) as s:
        model = httpx.get(s.url + "/v1/models").json()["data"][0]
        assert model["kind"] == "classifier"
        texts = [r["text"] for r in sentiment_records(40, seed=9)]
        r = httpx.post(s.url + "/v1/classify", json={"input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data) == 40 and all(abs(sum(d["probs"].values()) - 1) < 1e-5 for d in data)
        assert all(d["label"] in ("negative", "positive") and d["score"] == max(d["probs"].values()) for d in data)
        from edgeft.exporters.onnx_encoder import onnx_logits
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(cls_run.bundle / "tokenizer"))
        art = cls_run.bundle / "artifacts" / model["artifact"]
        want = onnx_logits(art, tok, texts, threads=1).argmax(1)
        labels = ["negative", "positive"]
        assert [d["label"] for d in data] == [labels[i] for i in want]  # what validate scored
        bad = httpx.post(s.url + "/v1/classify", json={"input": 3}, timeout=60)
        assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
        assert httpx.post(s.url + "/v1/chat/completions", json={"messages": []}).status_code == 404
        for i in range(0, 40, 8):  # one text per logged row
            httpx.post(s.url + "/v1/classify", json={"input": texts[i:i + 8]}, timeout=60)
    rows = [json.loads(x) for x in (tmp_path / "log" / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 80 and set(rows[0]["probs"]) == {"negative", "positive"}
    assert rows[0]["centroid_distance"] is not None
    res = run_cli("monitor", tmp_path / "log", "--bundle", cls_run.bundle, "--by", "drift", "--top-k", "3")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "log" / "monitor" / "drift.json").read_text())
    assert {f["feature"] for f in rep["features"]} == {"input_length", "input_tokens", "confidence", "prediction",
                                                       "embedding"}
    review = [json.loads(x) for x in (tmp_path / "log" / "monitor" / "review.jsonl").read_text().splitlines()]
    assert len(review) == 3 and {"text", "label", "score"} <= set(review[0])


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory):
    """A tiny BERT encoder exported to ONNX, validated on host and packaged with its reference statistics."""
    from optimum.exporters.onnx import main_export

    from edgeft.config.schema import ValidateConfig
    from edgeft.monitor.reference import reference_stats
    from edgeft.release import package
    from edgeft.validate import Artifact, validate

    root = tmp_path_factory.mktemp("serve-enc")
    model = build_tiny_bert(root / "model")
    main_export(str(model), output=str(root / "onnx"), task="feature-extraction", opset=18, do_validation=False)
    records = sentiment_records(64, seed=2)
    cfg = ValidateConfig(devices=["host"], require=["host"], eval_examples=16,
                         latency={"warmup": 0, "repeats": 2, "seq_len": 16},
                         budgets={"embedding_cosine": {"threshold": 0.9}})
    arts = [Artifact("merged", model, "pytorch", role="reference"), Artifact("onnx-fp32", root / "onnx", "onnx")]
    report = validate(arts, model, records[:16], root / "validate", cfg, recipe_name="tiny-enc")
    assert report.passed, report.gates
    stats = reference_stats("encoder", model, records[16:], records[:16], {"onnx-fp32": (root / "onnx", "onnx")})
    (root / "reference_stats.json").write_text(json.dumps(stats))
    files = {f"artifacts/onnx-fp32/{f.name}": f for f in (root / "onnx").iterdir() if f.is_file()}
    files.update({f"tokenizer/{f}": model / f for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                        "special_tokens_map.json", "config.json")
                  if (model / f).is_file()})
    files.update({"report.json": root / "validate" / "report.json", "reference_stats.json": root / "reference_stats.json"})
    return package("tiny-enc", "0.0.1", root / "out", files, {}, "# tiny-enc", "test").bundle_dir


def test_encoder_bundle_serves_openai_embeddings(encoder_bundle, tmp_path):
    from openai import OpenAI

    with Server(encoder_bundle, "--log", str(tmp_path)) as s:
        client = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        texts = ["a very good film", "the plot was dull"]
        res = client.embeddings.create(model=model, input=texts)  # the client asks for base64 by default
        vecs = np.asarray([d.embedding for d in res.data])
        floats = httpx.post(s.url + "/v1/embeddings", json={"input": texts, "encoding_format": "float"}).json()
        assert np.allclose(vecs, np.asarray([d["embedding"] for d in floats["data"]]), atol=1e-6)
        assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        assert res.usage.prompt_tokens > 0
    row = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[0])
    assert row["endpoint"] == "embeddings" and 0 <= row["centroid_distance"] <= 2
