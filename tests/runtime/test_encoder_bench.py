"""Per-inference latency of ONNX encoders: a tiny random BERT exported with optimum (feature-extraction).

Covers encoder detection, the synthetic feeds, ``measure_encoder`` in a fresh process, the inline
result's keys, and the same measurement over SSH with the standalone runner (reusing the sshd
fixture of ``tests/validate/test_remote_ssh.py``, loaded by path; skipped where sshd is missing).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import EdgeftError, ModelSourceError
from edgeft.runtime.bench import main as bench_main
from edgeft.runtime.bench import measure_encoder, run_encoder_inline
from edgeft.runtime.encoder import OrtEncoder, encoder_feeds, is_encoder

INLINE_KEYS = {"kind", "per_inference_ms_p50", "per_inference_ms_p95", "samples_ms", "batch", "seq_len", "threads",
               "warmup", "runs", "load_seconds", "peak_rss_mb"}


@pytest.fixture(scope="module")
def tiny_bert_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(PyTorch folder, ONNX folder) of a random 2-layer BERT (hidden 32, vocab 256).

    optimum's feature-extraction export needs only the model folder: no tokenizer is required.
    """
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=256)
    BertModel(cfg).eval().save_pretrained(root / "model")
    main_export(str(root / "model"), output=str(root / "onnx"), task="feature-extraction", opset=18,
                do_validation=False)
    return root / "model", root / "onnx"


@pytest.fixture(scope="module")
def tiny_encoder_dir(tiny_bert_dirs) -> Path:
    return tiny_bert_dirs[1]


def _graph(path: Path, input_names: list[str]) -> Path:
    """A one-node graph: the first input cast to float -> ``logits``; the other inputs are only declared."""
    import onnx
    from onnx import TensorProto, helper

    inputs = []
    for name in input_names:
        if name.startswith("past_key_values"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", 2, "past", 8]))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["b", "s"]))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s"])
    node = helper.make_node("Cast", [input_names[0]], ["logits"], to=TensorProto.FLOAT)
    model = helper.make_model(helper.make_graph([node], "g", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def decoder_with_past(tmp_path) -> Path:
    return _graph(tmp_path / "dec" / "model.onnx",
                  ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"])


def test_is_encoder(tiny_bert_dirs, decoder_with_past, tmp_path):
    torch_dir, onnx_dir = tiny_bert_dirs
    assert is_encoder(onnx_dir)
    assert is_encoder(onnx_dir / "model.onnx")
    assert not is_encoder(decoder_with_past)
    assert not is_encoder(decoder_with_past.parent)
    assert not is_encoder(torch_dir), "a folder without any .onnx file is not an ONNX encoder"
    assert not is_encoder(_graph(tmp_path / "noids" / "model.onnx", ["tokens"]).parent)


def test_feeds_are_deterministic_and_shaped():
    types = {"input_ids": "tensor(int64)", "attention_mask": "tensor(int64)", "token_type_ids": "tensor(int64)"}
    f = encoder_feeds(types, 3, 7)
    assert {k: v.shape for k, v in f.items()} == {k: (3, 7) for k in types}
    assert all(v.dtype == np.int64 for v in f.values())
    assert f["input_ids"][0, :3].tolist() == [100, 101, 102] and f["input_ids"].max() < 200
    assert (f["attention_mask"] == 1).all() and (f["token_type_ids"] == 0).all()
    np.testing.assert_array_equal(encoder_feeds(types, 3, 7)["input_ids"], f["input_ids"])
    assert encoder_feeds({"input_ids": "tensor(int32)"}, 1, 4)["input_ids"].dtype == np.int32


def test_ort_encoder_times_one_pass(tiny_encoder_dir):
    enc = OrtEncoder(tiny_encoder_dir, threads=1)
    assert set(enc.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert enc.timed_inference(2, 16) > 0
    (hidden,) = enc.run(2, 16)[:1]
    assert hidden.shape == (2, 16, 32) and np.isfinite(hidden).all()


def test_ort_encoder_rejects_other_inputs(decoder_with_past, tmp_path):
    with pytest.raises(ModelSourceError, match=r"model\.onnx.*past_key_values"):
        OrtEncoder(decoder_with_past)
    odd = _graph(tmp_path / "odd" / "model.onnx", ["input_ids", "attention_mask", "position_ids"])
    with pytest.raises(ModelSourceError) as ei:
        OrtEncoder(odd.parent)
    assert str(odd) in str(ei.value) and "position_ids" in str(ei.value)


def test_measure_encoder_in_fresh_process(tiny_encoder_dir):
    res = measure_encoder(tiny_encoder_dir, threads=1, batch=2, seq=16, warmup=1, repeats=5)
    assert set(res) == INLINE_KEYS
    assert res["kind"] == "encoder" and (res["batch"], res["seq_len"], res["threads"]) == (2, 16, 1)
    assert 0 < res["per_inference_ms_p50"] <= res["per_inference_ms_p95"]
    assert len(res["samples_ms"]) == res["runs"] == 5 and all(s > 0 for s in res["samples_ms"])
    assert res["peak_rss_mb"] > 0 and res["load_seconds"] > 0


def test_measure_encoder_failure_names_path(decoder_with_past):
    with pytest.raises(EdgeftError, match=r"latency run of .*dec.* failed: .*past_key_values"):
        measure_encoder(decoder_with_past.parent, threads=1, batch=1, seq=4, warmup=0, repeats=1)


def test_run_encoder_inline_keys(tiny_encoder_dir):
    res = run_encoder_inline(str(tiny_encoder_dir), 1, 1, 8, 0, 3)
    assert set(res) == INLINE_KEYS
    assert (res["runs"], res["warmup"], len(res["samples_ms"])) == (3, 0, 3)
    assert 0 < res["per_inference_ms_p50"] <= res["per_inference_ms_p95"]


def test_bench_cli_lm_kind_still_needs_format_and_prompt(tiny_encoder_dir, capsys):
    with pytest.raises(SystemExit):
        bench_main(["--path", str(tiny_encoder_dir), "--threads", "1"])
    assert "--format and --prompt" in capsys.readouterr().err


# --------------------------------------------------------------------------- over SSH


def _ssh_fixtures():
    """tests/validate/test_remote_ssh.py loaded under its own name (a shared conftest.py would shadow
    tests/conftest.py for the ``from conftest import ...`` used at run time by other test files)."""
    path = Path(__file__).resolve().parents[1] / "validate" / "test_remote_ssh.py"
    spec = importlib.util.spec_from_file_location("_edgeft_encoder_sshd_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sshd_server = _ssh_fixtures().sshd_server


def test_measure_remote_encoder_over_ssh(sshd_server, tiny_encoder_dir):
    import socket

    from edgeft.config.schema import RemoteSpec
    from edgeft.validate.remote import measure_remote_encoder

    user, port, key = sshd_server
    spec = RemoteSpec(ssh=f"{user}@127.0.0.1", port=port, python=sys.executable)
    res = measure_remote_encoder(spec, tiny_encoder_dir, threads=1, batch=2, seq=16, warmup=1, repeats=4,
                                 identity_file=key, timeout=300)
    extra = {"label", "device_host", "python", "onnxruntime", "machine", "hostname"}
    assert set(res) == INLINE_KEYS | extra
    assert res["label"] == "measured-device" and res["device_host"] == f"{user}@127.0.0.1"
    assert res["hostname"] == socket.gethostname()
    assert res["kind"] == "encoder" and (res["batch"], res["seq_len"], res["threads"], res["runs"]) == (2, 16, 1, 4)
    assert 0 < res["per_inference_ms_p50"] <= res["per_inference_ms_p95"] and len(res["samples_ms"]) == 4
    assert res["peak_rss_mb"] > 0
