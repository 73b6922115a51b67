"""finetune.litert_qat on tiny random BERT classifiers: the simulated int8 forward against the real full-integer
LiteRT graph, the configuration checks, and the quantization-aware steps on a LoRA classifier."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("ai_edge_quantizer", reason="needs the litert extra: pip install 'edgeft[litert]'")

from conftest import build_tiny_bert  # noqa: E402
from edgeft.config.schema import FinetuneConfig, StaticShapes  # noqa: E402
from edgeft.errors import ConfigError, UnsupportedError  # noqa: E402
from edgeft.finetune import litert_qat  # noqa: E402

WORDS = ["great", "bad", "slow", "fun", "odd", "warm", "cold", "fine", "film", "story", "a", "the", "not"]
SEQ = 16


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    enc = build_tiny_bert(tmp_path_factory.mktemp("qat-enc") / "model")
    out = tmp_path_factory.mktemp("qat-cls") / "model"
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_pretrained(str(enc), num_labels=2).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(enc)).save_pretrained(out)
    return out


def test_simulated_int8_forward_rounds_like_the_full_integer_graph(cls_dir, tmp_path):
    """Calibrated on the export's calibration texts, the simulation's input grid is the .tflite input's own, and
    its rounding moves the logits away from the float forward by as much as the int8 graph does (the same
    rounding points; the kernels' own arithmetic differs, so the errors are alike in size, not equal)."""
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.config.loader import load_preset
    from edgeft.exporters.litert import export_preset
    from edgeft.runtime.litert import LiteRTModel

    calib, texts = _texts(32, 0), _texts(24, 1)
    p = load_preset("litert-int8-full")
    p = p.model_copy(update={"options": {**p.options, "min_label_agreement": 0.0}})
    export_preset(cls_dir, tmp_path / "art", p, sample_texts=texts[:8], calibration_texts=calib,
                  static_shapes=StaticShapes(batch=1, seq=SEQ))
    tok = AutoTokenizer.from_pretrained(str(cls_dir))
    graph = LiteRTModel(tmp_path / "art", threads=1).logits(tok, texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(cls_dir), attn_implementation="eager").eval()
    sim = litert_qat.Int8Simulation(model, litert_qat._options("litert-int8-full"), tok, SEQ)
    c_ids, c_mask = sim.encode(calib)
    ranges = sim.calibrate(c_ids, c_mask)
    ids, mask = sim.encode(texts)
    with torch.no_grad():
        simulated = sim.logits(ids, mask, ranges).numpy()
        floating = sim.edge(sim.edge.embed(torch.as_tensor(ids, dtype=torch.long)), torch.as_tensor(mask)).numpy()
    interp = Interpreter(model_path=str(tmp_path / "art" / "model.tflite"))
    x = next(d for d in interp.get_input_details() if d["shape"][-1] > 1 and len(d["shape"]) == 3)
    lo, hi = min(ranges[0][0], 0.0), max(ranges[0][1], 0.0)
    assert (hi - lo) / 255 == pytest.approx(x["quantization"][0], rel=1e-4)  # the input's grid is the graph's
    assert len(ranges) > 50  # every op output of the 2-layer graph has its own int8 grid
    ratio = np.abs(simulated - floating).mean() / np.abs(graph - floating).mean()
    assert 0.5 < ratio < 2.0, ratio


def test_checks_name_the_field_and_the_fix():
    with pytest.raises(ConfigError, match="finetune.litert_qat with objective sft.*objective classify"):
        litert_qat.check(FinetuneConfig(objective="sft", litert_qat={}))
    with pytest.raises(ConfigError, match="litert-int8-dynamic.*not full-integer"):
        litert_qat.check(FinetuneConfig(objective="classify", litert_qat={"preset": "litert-int8-dynamic"}))
    with pytest.raises(UnsupportedError, match="method dora.*use one of lora"):
        litert_qat.check(FinetuneConfig(objective="classify", method="dora", litert_qat={}))
    with pytest.raises(ConfigError, match="'onnx-cls', a onnx preset"):
        litert_qat.check(FinetuneConfig(objective="classify", litert_qat={"preset": "onnx-cls"}))


def test_steps_train_the_adapter_and_keep_the_best(cls_dir):
    """On a LoRA classifier: only adapter and head weights move, the frozen base does not; the kept step has the
    lowest simulated eval loss seen (step 0, the float weights, included)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(cls_dir))
    base = AutoModelForSequenceClassification.from_pretrained(str(cls_dir), attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS"))
    texts = _texts(96, 2)
    gold = [int("great" in t or "fun" in t) for t in texts]
    recs = [{"text": t, "label": g} for t, g in zip(texts, gold)]
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    trained = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    cfg = FinetuneConfig(objective="classify", batch_size=16, learning_rate=5e-2,
                         litert_qat={"steps": 12, "recalibrate_every": 4, "calibration_examples": 32})
    out = litert_qat.train(model, tok, recs[:64], recs[64:], gold[:64], gold[64:], cfg, SEQ)
    assert out["steps"] == 12 and [h["step"] for h in out["history"]] == [4, 8, 12]
    losses = [out["eval_loss_int8_simulated_before"]] + [h["eval_loss"] for h in out["history"]]
    assert out["eval_loss_int8_simulated"] == min(losses)
    assert out["kept_step"] == [0, 4, 8, 12][losses.index(min(losses))]
    now = dict(model.named_parameters())
    assert all(torch.equal(now[k], v) for k, v in frozen.items())
    moved = any(not torch.equal(now[k], v) for k, v in trained.items())
    assert moved == (out["kept_step"] > 0)
