"""LiteRT (.tflite) export and runtime on tiny random BERT classifiers and encoders (litert extra needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("ai_edge_quantizer", reason="needs the litert extra: pip install 'edgeft[litert]'")
pytest.importorskip("ai_edge_litert", reason="needs the litert extra: pip install 'edgeft[litert]'")

from artifact_checks import check_artifact  # noqa: E402
from conftest import REPO, build_tiny_bert  # noqa: E402
from edgeft.config.schema import StaticShapes  # noqa: E402
from edgeft.errors import ConfigError  # noqa: E402
from edgeft.exporters import export  # noqa: E402
from edgeft.exporters.litert import LiteRTOptions, export_litert  # noqa: E402
from edgeft.runtime.litert import LiteRTModel  # noqa: E402

TEXTS = ["a gripping , funny film", "dull and lifeless", "it is what it is", "the best of the year",
         "a waste of two hours", "charming , if slight", "not bad at all", "loud and empty"]
CALIB = [f"{w} film , {v} story" for w in ("great", "bad", "slow", "fun", "odd", "warm", "cold", "fine")
         for v in ("a", "the", "one", "no")]
SEQ = StaticShapes(batch=1, seq=16)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("litert-enc") / "model")


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT with a seeded 2-label classification head, saved as a *ForSequenceClassification."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("litert-cls") / "model"
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=2)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(out)
    return out


def _export(model_dir, out, preset, **options):
    """``preset`` with ``options`` overridden (the tiny random head has small logit margins: 8 sample texts
    agree 7/8 or 8/8 after int8, so the int8 tests ask for 0.75 instead of the presets' 0.9)."""
    from edgeft.config.loader import load_preset
    from edgeft.exporters.litert import export_preset

    p = load_preset(preset)
    p = p.model_copy(update={"options": {**p.options, **options}})
    return export_preset(model_dir, out, p, sample_texts=TEXTS, calibration_texts=CALIB, static_shapes=SEQ)


def _torch_logits(model_dir, texts, seq):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    enc = tok(texts, truncation=True, max_length=seq, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return tok, model(**enc).logits.numpy()


PRESETS = ["litert-fp32", "litert-int8-dynamic", "litert-int8-full", "litert-int8-edgetpu"]


@pytest.fixture(scope="module")
def exported(cls_dir, tmp_path_factory) -> dict:
    """Each shipped preset exported once: name -> (folder, report)."""
    out = {}
    for preset in PRESETS:
        d = tmp_path_factory.mktemp(preset) / "art"
        if preset == "litert-fp32":  # through the preset dispatch of edgeft.exporters.export
            rep = export(cls_dir, d, preset=preset, sample_texts=TEXTS, calibration_texts=CALIB, static_shapes=SEQ)
        else:
            rep = _export(cls_dir, d, preset, min_label_agreement=0.75)
        out[preset] = (d, rep)
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_exports_and_runs(cls_dir, exported, preset):
    out, rep = exported[preset]
    assert (out / "model.tflite").is_file() and (out / "export_report.json").is_file()
    assert rep["format"] == "tflite" and rep["seq"] == 16
    tok, ref = _torch_logits(cls_dir, TEXTS, 16)
    got = LiteRTModel(out, threads=1).logits(tok, TEXTS)
    assert got.shape == ref.shape
    if preset == "litert-fp32":
        assert rep["parity"][0]["passed"] and rep["parity"][0]["max_abs_diff"] <= 2e-3
        assert np.abs(got - ref).max() < 2e-3  # the runtime's own padding/truncation matches PyTorch's
        check_artifact(out, name=preset, kind="classifier", format="tflite", precision="fp32", stage="export",
                       producer=preset, runtime="tflite", main_file="model.tflite", size_bytes=rep["size_bytes"])
    else:
        assert rep["vs_reference"]["label_agreement"] >= 0.75
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.75


def test_full_integer_graph_is_int8_and_static(exported):
    from ai_edge_litert.interpreter import Interpreter

    out, rep = exported["litert-int8-full"]
    it = Interpreter(str(out / "model.tflite"))
    ins, outs = it.get_input_details(), it.get_output_details()
    assert [np.dtype(d["dtype"]) for d in ins + outs] == [np.int8] * 3
    assert sorted(tuple(d["shape_signature"]) for d in ins) == [(1, 16), (1, 16, 32)]
    assert all(d["quantization"][0] > 0 for d in ins + outs)  # scale recorded
    assert tuple(outs[0]["shape_signature"]) == (1, 2)
    assert rep["graph"]["float_ops"] == []
    meta = json.loads((out / "litert.json").read_text())
    assert meta["input"] == "embeddings" and (out / "embeddings.safetensors").is_file()
    assert {d["name"]: d["scale"] for d in meta["inputs"]} == {d["name"]: pytest.approx(float(d["quantization"][0]))
                                                                for d in ins}


@pytest.mark.parametrize("opts", [{"embeddings_outside": True}, {"gelu": "tanh"}, {"layernorm": "decomposed"},
                                  {"attention": "mul-sum"}, {"linear": "conv1x1"}, {"softmax": "decomposed"}],
                         ids=["embeddings-outside", "gelu-tanh", "layernorm-decomposed", "attention-mul-sum",
                              "linear-conv1x1", "softmax-decomposed"])
def test_surgery_fp32_parity_and_cost(cls_dir, tmp_path, opts):
    out = tmp_path / "s"
    rep = export_litert(cls_dir, out, LiteRTOptions(**opts), sample_texts=TEXTS, static_shapes=SEQ)
    assert rep["parity"][0]["passed"]
    cost = rep["surgery"]
    assert cost["label_agreement"] == 1.0 and cost["max_abs_diff"] < 1e-2
    if opts.get("layernorm") == "decomposed":
        assert "SQUARED_DIFFERENCE" not in rep["graph"]["ops"]
    if opts.get("gelu") == "tanh":
        assert "GELU" not in rep["graph"]["ops"] and "LOGISTIC" in rep["graph"]["ops"]
    if opts.get("attention") == "mul-sum":
        from edgeft.validate.tflite_compat import inspect_tflite

        assert "BATCH_MATMUL" not in rep["graph"]["ops"] and "SUM" in rep["graph"]["ops"]
        info = inspect_tflite(out / "model.tflite")
        assert max(t["non_unit_dims"] for t in info["tensors"]) <= 3  # the Edge TPU's rule
    if opts.get("linear") == "conv1x1":  # only the pooler and the classifier (one row each) stay FULLY_CONNECTED
        assert rep["graph"]["ops"]["CONV_2D"] == 12 and rep["graph"]["ops"]["FULLY_CONNECTED"] == 2
    if opts.get("softmax") == "decomposed":
        from edgeft.validate.tflite_compat import inspect_tflite

        assert "SOFTMAX" not in rep["graph"]["ops"] and "MAX_POOL_2D" in rep["graph"]["ops"]
        info = inspect_tflite(out / "model.tflite")  # RSQRT (slow in int8 on CPUs) on one value per row, not per score
        rsqrt_in = [info["tensors"][op["inputs"][0]]["shape"] for op in info["ops"] if op["op"] == "RSQRT"]
        heads = json.loads((cls_dir / "config.json").read_text())["num_attention_heads"]
        assert rsqrt_in and all(np.prod(shape) <= heads * SEQ.seq for shape in rsqrt_in)
    tok, ref = _torch_logits(cls_dir, TEXTS, 16)
    assert np.abs(LiteRTModel(out).logits(tok, TEXTS) - ref).max() < 1e-2


def test_encoder_mean_pooled_embeddings(tiny_bert_dir, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "enc"
    rep = export_litert(tiny_bert_dir, out, LiteRTOptions(embeddings_outside=True), sample_texts=TEXTS,
                        static_shapes=SEQ)
    assert rep["task"] == "encoder" and rep["parity"][0]["passed"]
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    got = LiteRTModel(out).embeddings(tok, TEXTS)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = AutoModel.from_pretrained(str(tiny_bert_dir)).eval()(**enc).last_hidden_state.numpy()
    m = enc["attention_mask"].numpy()[..., None]
    ref = (h * m).sum(1) / m.sum(1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert (got * ref).sum(1).min() > 0.999


def test_full_integer_with_embeddings_in_graph_fails_loudly(cls_dir, tmp_path):
    from edgeft.errors import ParityError

    with pytest.raises(ParityError, match="not all int8.*EMBEDDING_LOOKUP.*embeddings_outside: true"):
        _export(cls_dir, tmp_path / "x", "litert-int8-full", embeddings_outside=False, min_label_agreement=0.0)
    assert not (tmp_path / "x").exists()


def test_full_integer_needs_calibration_texts(cls_dir, tmp_path):
    with pytest.raises(ConfigError, match="calibration texts"):
        export(cls_dir, tmp_path / "x", preset="litert-int8-full", sample_texts=TEXTS, static_shapes=SEQ)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="options.gelu_form: unknown option.*did you mean 'gelu'"):
        LiteRTOptions.parse({"gelu_form": "tanh"}, "export/x.yaml")


def test_timed_inference_at_thread_count(exported):
    from edgeft.runtime.bench import run_encoder_inline

    out, _ = exported["litert-int8-full"]
    assert LiteRTModel(out, threads=2).timed_inference() > 0
    m = run_encoder_inline(str(out), threads=2, batch=1, seq=16, warmup=0, repeats=2)
    assert m["runs"] == 2 and m["threads"] == 2 and m["per_inference_ms_p50"] > 0
    with pytest.raises(ValueError, match="runs 1 x 16, not 1 x 32"):
        run_encoder_inline(str(out), threads=1, batch=1, seq=32, warmup=0, repeats=1)


def test_cli_export_full_integer_with_calibration_file(cls_dir, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import cli

    texts = tmp_path / "calib.txt"
    texts.write_text("\n".join(CALIB) + "\n")
    preset = tmp_path / "litert-int8-full.yaml"  # the shipped preset; 6 default sample texts
    preset.write_text((REPO / "export" / "litert-int8-full.yaml").read_text().replace("min_label_agreement: 0.9",
                                                                                      "min_label_agreement: 0.5"))
    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["export", str(cls_dir), "--out", str(out), "--preset", str(preset),
                                    "--calibration-texts", str(texts)])
    assert res.exit_code == 0, res.output
    assert "tflite" in res.output and "label_agreement" in res.output and (out / "model.tflite").is_file()
    bad = CliRunner().invoke(cli, ["export", str(cls_dir), "--out", str(tmp_path / "o"), "--preset", "onnx-cls",
                                    "--calibration-texts", str(texts)])
    assert bad.exit_code != 0 and "applies to LiteRT presets" in bad.output


def test_missing_package_names_the_extra(monkeypatch):
    import sys

    from edgeft.errors import UnsupportedError
    from edgeft.exporters.litert import require

    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)  # import of it raises ImportError
    with pytest.raises(UnsupportedError, match=r"ai_edge_quantizer is missing.*pip install 'edgeft\[litert\]'"):
        require()
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    require("running a LiteRT model", run_only=True)  # the interpreter alone runs a graph (no torch imported)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(UnsupportedError, match=r"running a LiteRT model needs the litert extra"):
        require("running a LiteRT model", run_only=True)


def test_weight_only_algorithm_cannot_pass_as_full_integer(cls_dir, tmp_path):
    """ai-edge-quantizer's MSE algorithm quantizes weights only: the graph check refuses the float activations."""
    from edgeft.errors import ParityError

    with pytest.raises(ParityError, match="not all int8.*float I/O: .*serving_default_x"):
        _export(cls_dir, tmp_path / "mse", "litert-int8-full", algorithm="MSE", min_label_agreement=0.0)
