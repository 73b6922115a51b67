"""TorchScript export on the tiny LLaMA (static KV cache, prefill + decode) and a tiny BERT, vs eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact
from conftest import build_tiny_bert
from edgeft.errors import ModelSourceError, ParityError, UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_CACHE = 96


@pytest.fixture(scope="module")
def ts_decoder(tiny_lm_dir, tmp_path_factory) -> tuple[Path, dict]:
    from edgeft.exporters.torchscript import export_torchscript

    out = tmp_path_factory.mktemp("ts") / "decoder"
    rep = export_torchscript(tiny_lm_dir, out, max_cache_len=MAX_CACHE, sample_ids=list(range(40, 60)))
    return out, rep


def _eager(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def _greedy_no_cache(model, prompt: list[int], n: int) -> list[int]:
    """Reference greedy decode: the whole sequence through eager PyTorch each step (no cache at all)."""
    import torch

    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_decoder_export_parity_every_output(ts_decoder):
    out, rep = ts_decoder
    assert (out / "model.pt").is_file() and (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    meta = json.loads((out / "torchscript.json").read_text())
    assert meta["kind"] == "causal-lm" and meta["max_cache_len"] == MAX_CACHE and meta["num_layers"] == 2
    # logits + key/value of 2 layers, for the prefill and for the cached decode step
    assert len(rep["parity"]) == 10
    assert {c["step"] for c in rep["parity"]} == {"prefill", "decode"}
    assert all(c["passed"] for c in rep["parity"])
    assert rep["max_abs_diff"] < 1e-4
    assert json.loads((out / "export_report.json").read_text())["max_abs_diff"] == rep["max_abs_diff"]


def test_greedy_generation_matches_eager_token_for_token(ts_decoder, tiny_lm_dir):
    from edgeft.runtime.lm import load_lm
    from edgeft.runtime.torchscript import TorchScriptLM

    out, _ = ts_decoder
    lm = load_lm(out, "torchscript", threads=2)
    assert isinstance(lm, TorchScriptLM)
    model = _eager(tiny_lm_dir)
    prompts = [list(range(30, 41)), [7, 99, 150, 3, 12], list(range(200, 230))]
    got = lm.generate(prompts, 24, eos_ids=[])  # no eos: every prompt runs the full 24 tokens
    for p, g in zip(prompts, got):  # later prompts reuse the cache of earlier ones (stale slots must stay masked)
        assert g == _greedy_no_cache(model, p, 24)
    ttft, steps = lm.timed_generate(prompts[0], 6)
    assert ttft > 0 and len(steps) == 5


def test_logits_match_eager_and_long_inputs_refused(ts_decoder, tiny_lm_dir):
    from edgeft.runtime.lm import TorchLM
    from edgeft.runtime.torchscript import TorchScriptLM

    out, _ = ts_decoder
    lm = TorchScriptLM(out)
    ids = np.random.default_rng(0).integers(0, 500, 64)
    diff = np.abs(lm.logits(ids) - TorchLM(tiny_lm_dir).logits(ids)).max()
    assert diff < 1e-4
    with pytest.raises(ModelSourceError, match="max_cache_len"):
        lm.logits(np.arange(MAX_CACHE + 1) % 500)


def test_parity_failure_names_the_outputs(ts_decoder, tiny_lm_dir):
    import torch

    from edgeft.exporters.torchscript import decoder_parity

    out, _ = ts_decoder
    model = _eager(tiny_lm_dir)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight.add_(0.05)  # layer 1 values and logits change, layer 0 not
    with pytest.raises(ParityError) as e:
        decoder_parity(model, torch.jit.load(str(out / "model.pt")), np.asarray([list(range(40, 52))]), 1e-3)
    msg = str(e.value)
    assert "present.1.value" in msg and "logits" in msg and "present.0.key" not in msg


def test_export_preset_and_mobile_option(tiny_lm_dir, tmp_path):
    from edgeft.config.loader import load_preset
    from edgeft.exporters import EXPORTERS, export

    assert "torchscript" in EXPORTERS
    assert load_preset("torchscript").format == "torchscript"
    rep = export(tiny_lm_dir, tmp_path / "p", preset="torchscript", sample_ids=list(range(10, 20)))
    assert rep["format"] == "torchscript" and rep["max_cache_len"] == 512 and rep["max_abs_diff"] < 1e-4
    check_artifact(tmp_path / "p", name="torchscript", kind="causal-lm", format="torchscript", precision="fp32",
                   runtime="torchscript", main_file="model.pt", options={"max_cache_len": 512, "mobile": False},
                   size_bytes=rep["size_bytes"])
    try:  # optimize_for_mobile needs XNNPACK; the pinned x86 CPU wheel has none
        rep = export(tiny_lm_dir, tmp_path / "m", preset="torchscript-mobile", sample_ids=list(range(10, 20)))
    except UnsupportedError as e:
        assert "XNNPACK" in str(e) and "mobile: false" in str(e)
    else:
        assert (tmp_path / "m" / "model.ptl").is_file() and rep["max_abs_diff"] < 1e-3


def test_latency_in_a_fresh_process(ts_decoder):
    from edgeft.runtime.bench import measure

    out, _ = ts_decoder
    m = measure(out, "torchscript", 1, list(range(30, 40)), 4, warmup=0, repeats=1)
    assert m["decode_steps"] == 3 and m["decode_tok_s"] > 0 and m["peak_rss_mb"] > 0


def test_compat_treats_torchscript_by_device_formats():
    from edgeft.config.loader import load_device
    from edgeft.validate import compat

    art = {"name": "ts-int8", "format": "torchscript", "precision": "int8", "int8_mode": "dynamic",
           "size_bytes": 200 * 2**20, "est_ram_mb": 400.0, "onnx": None}
    assert compat.check(art, load_device("host"))["compatible"]
    assert compat.check(art, load_device("pi5"))["compatible"]
    phone = compat.check(art, load_device("phone-cpu"))
    assert not phone["compatible"]
    assert any("format torchscript is not supported on phone-cpu" in r for r in phone["reasons"])


# --------------------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("ts-bert") / "bert")


@pytest.fixture(scope="module")
def tiny_bert_classifier(tiny_bert, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("ts-bert-cls") / "cls"
    cfg = BertConfig.from_pretrained(str(tiny_bert), num_labels=3)
    torch.manual_seed(1)
    BertForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(out)
    return out


TEXTS = ["the film was good", "a boring and tedious plot, the cast was weak and the story bland", "great"]


def test_encoder_export_matches_eager(tiny_bert, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgeft.exporters.torchscript import export_torchscript
    from edgeft.runtime.torchscript import TorchScriptEncoder

    rep = export_torchscript(tiny_bert, tmp_path / "enc")
    assert rep["kind"] == "encoder" and rep["parity"][0]["name"] == "last_hidden_state"
    assert rep["max_abs_diff"] < 1e-4
    enc = TorchScriptEncoder(tmp_path / "enc")
    batch = AutoTokenizer.from_pretrained(str(tiny_bert))(TEXTS, padding=True, return_tensors="np")
    got = enc(batch["input_ids"], batch["attention_mask"])  # 3 texts: another batch size and length than traced
    with torch.inference_mode():
        ref = AutoModel.from_pretrained(str(tiny_bert)).eval()(
            input_ids=torch.as_tensor(batch["input_ids"]),
            attention_mask=torch.as_tensor(batch["attention_mask"])).last_hidden_state.numpy()
    real = batch["attention_mask"].astype(bool)
    assert got.shape == ref.shape
    assert np.abs(got[real] - ref[real]).max() < 1e-4


def test_classifier_export_matches_eager(tiny_bert_classifier, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.exporters import export
    from edgeft.runtime.torchscript import TorchScriptEncoder

    rep = export(tiny_bert_classifier, tmp_path / "cls", preset="torchscript", sample_texts=TEXTS)
    assert rep["kind"] == "classifier" and rep["parity"][0]["name"] == "logits" and rep["max_abs_diff"] < 1e-4
    batch = AutoTokenizer.from_pretrained(str(tiny_bert_classifier))(TEXTS[:2], padding=True, return_tensors="np")
    got = TorchScriptEncoder(tmp_path / "cls")(batch["input_ids"], batch["attention_mask"])
    with torch.inference_mode():
        ref = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_classifier)).eval()(
            input_ids=torch.as_tensor(batch["input_ids"]),
            attention_mask=torch.as_tensor(batch["attention_mask"])).logits.numpy()
    assert got.shape == (2, 3)
    assert np.abs(got - ref).max() < 1e-4
    with pytest.raises(ModelSourceError, match="not a causal LM"):
        from edgeft.runtime.torchscript import TorchScriptLM

        TorchScriptLM(tmp_path / "cls")


@pytest.mark.slow
def test_smollm2_torchscript_greedy_matches_eager(tmp_path):
    """Real SmolLM2-135M: export parity (prefill + decode, logits and 30 layers' KV) and 16 greedy tokens."""
    import torch

    from edgeft.errors import ModelSourceError as _Missing
    from edgeft.exporters.torchscript import export_torchscript
    from edgeft.models import resolve_model
    from edgeft.runtime.torchscript import TorchScriptLM

    try:
        base = resolve_model("smollm2-135m").path
    except _Missing as e:
        pytest.skip(f"smollm2-135m is not available here: {e}")
    torch.set_num_threads(2)
    rep = export_torchscript(base, tmp_path / "ts", max_cache_len=128, sample_ids=list(range(1000, 1024)))
    assert len(rep["parity"]) == 2 * (1 + 2 * 30) and rep["max_abs_diff"] < 2e-3
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407]
    got = TorchScriptLM(tmp_path / "ts", 2).generate([prompt], 16, eos_ids=[])[0]
    assert got == _greedy_no_cache(_eager(base), prompt, 16)
