"""validate() on an encoder: embedding agreement vs the reference and per-inference latency gates."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_bert(tiny_lm_dir, tmp_path_factory):
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=len(tok), max_position_embeddings=256))
    root = tmp_path_factory.mktemp("bert")
    model.save_pretrained(root / "torch")
    main_export(str(root / "torch"), output=str(root / "onnx"), task="feature-extraction", opset=18,
                do_validation=False)
    return root


def test_encoder_report_has_cosine_and_per_inference_gates(tiny_bert, tiny_lm_dir, tmp_path):
    from edgeft.config.schema import ValidateConfig
    from edgeft.data.intents import generate
    from edgeft.validate import Artifact, validate

    _, ev = generate(4, 8, seed=0)
    cfg = ValidateConfig.model_validate({"devices": ["host", "phone-cpu", "edge-tpu"], "require": ["phone-cpu"],
                                         "eval_examples": 8, "latency": {"batch": 1, "seq_len": 16, "warmup": 0,
                                                                         "repeats": 5}})
    arts = [Artifact("torch", tiny_bert / "torch", "pytorch", role="reference"),
            Artifact("onnx", tiny_bert / "onnx", "onnx")]
    report = validate(arts, tiny_lm_dir, ev, tmp_path, cfg)
    assert report.kind == "encoder" and report.passed is True
    onnx = report.artifacts["onnx"]
    assert onnx.accuracy.embedding_cosine == pytest.approx(1.0, abs=1e-4)
    assert onnx.accuracy.exact_match is None  # no generation for encoders
    assert 0 < onnx.latency.per_inference_ms_p50 <= onnx.latency.per_inference_ms_p95
    assert (onnx.latency.batch, onnx.latency.seq_len) == (1, 16)
    assert [g.name for g in report.gates] == ["embedding_cosine threshold"]
    phone = report.devices["phone-cpu"].results["onnx"]
    assert phone.passed and phone.gated_on == "measured-host"
    assert any(g.name.startswith("size_mb") for g in phone.gates)
    assert any(g.name == "per_inference_ms (measured-host)" and g.passed for g in phone.gates), phone.gates
    assert not report.devices["edge-tpu"].results["onnx"].compatible
    assert (tmp_path / "report.html").is_file()
