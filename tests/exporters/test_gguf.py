"""GGUF export of a tiny LLaMA: reader round-trip (names, shapes, types, metadata, tokenizer), the Q/K
permutation, and — when llama-cpp-python is installed — llama.cpp's logits vs PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
NEEDS_LLAMA_CPP = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed "
                                                               "(pip install 'edgeft[bench]'): llama.cpp checks skipped")
WINDOW = list(range(3, 67))


@pytest.fixture(scope="module")
def written(tiny_lm_dir, tmp_path_factory) -> dict[str, Path]:
    from edgeft.exporters.gguf import write_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {q: (write_gguf(tiny_lm_dir, out / f"m-{q}.gguf", q), out / f"m-{q}.gguf")[1] for q in ("F32", "Q8_0", "Q4_0")}


def _reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def test_round_trip_names_shapes_types_metadata(written, tiny_lm_dir):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(tiny_lm_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    r = _reader(written["Q4_0"])
    tensors = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight", "output_norm.weight"}
    for i in range(cfg.num_hidden_layers):
        expected |= {f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected  # tied LM head: no output.weight
    kv_dim = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    # GGUF shapes are ggml's (innermost first): [in, out]
    assert list(tensors["blk.0.attn_q.weight"].shape) == [cfg.hidden_size, cfg.hidden_size]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [cfg.hidden_size, kv_dim]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [cfg.intermediate_size, cfg.hidden_size]
    assert list(tensors["token_embd.weight"].shape) == [cfg.hidden_size, cfg.vocab_size]
    Q = gguf.GGMLQuantizationType
    assert tensors["blk.0.ffn_up.weight"].tensor_type == Q.Q4_0
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32

    f = r.fields
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.block_count"].contents() == cfg.num_hidden_layers
    assert f["llama.embedding_length"].contents() == cfg.hidden_size
    assert f["llama.attention.head_count_kv"].contents() == cfg.num_key_value_heads
    assert f["llama.rope.dimension_count"].contents() == cfg.hidden_size // cfg.num_attention_heads
    assert abs(f["llama.attention.layer_norm_rms_epsilon"].contents() - cfg.rms_norm_eps) < 1e-9
    assert f["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_0
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg.vocab_size
    assert tokens[tok.eos_token_id] == tok.eos_token
    assert f["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id
    types = f["tokenizer.ggml.token_type"].contents()
    assert types[tok.convert_tokens_to_ids("<|im_start|>")] == gguf.TokenType.CONTROL
    assert len(f["tokenizer.ggml.merges"].contents()) > 0
    assert "im_start" in f["tokenizer.chat_template"].contents()


def test_f32_tensors_round_trip_with_qk_permutation(written, tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.exporters.gguf import permute_qk

    m = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), torch_dtype=torch.float32)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    t = {x.name: np.asarray(x.data) for x in _reader(written["F32"]).tensors}
    n_head, n_kv = m.config.num_attention_heads, m.config.num_key_value_heads
    np.testing.assert_array_equal(t["blk.1.attn_q.weight"], permute_qk(sd["model.layers.1.self_attn.q_proj.weight"], n_head))
    np.testing.assert_array_equal(t["blk.1.attn_k.weight"], permute_qk(sd["model.layers.1.self_attn.k_proj.weight"], n_kv))
    np.testing.assert_array_equal(t["blk.0.attn_v.weight"], sd["model.layers.0.self_attn.v_proj.weight"])
    np.testing.assert_array_equal(t["token_embd.weight"], sd["model.embed_tokens.weight"])
    # the permutation really reorders rows (and is a permutation)
    q = sd["model.layers.1.self_attn.q_proj.weight"]
    assert not np.array_equal(permute_qk(q, n_head), q)
    assert sorted(map(tuple, permute_qk(q, n_head).round(6))) == sorted(map(tuple, q.round(6)))


def test_q8_0_dequantizes_close_to_fp32(written, tiny_lm_dir):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), torch_dtype=torch.float32)
    w = m.state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
    t = next(x for x in _reader(written["Q8_0"]).tensors if x.name == "blk.0.ffn_up.weight")
    deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
    assert np.max(np.abs(deq - w)) <= np.max(np.abs(w)) / 127 + 1e-6


def test_unsupported_architecture_is_clear(tmp_path):
    import json

    from edgeft.errors import UnsupportedError
    from edgeft.exporters.gguf import write_gguf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedError, match="LlamaForCausalLM"):
        write_gguf(tmp_path, tmp_path / "x.gguf")


def test_without_llama_cpp_the_runtime_says_how_to_install(monkeypatch, written):
    import builtins

    from edgeft.errors import UnsupportedError
    from edgeft.runtime.llamacpp import LlamaCppLM

    real = builtins.__import__

    def no_llama(name, *a, **k):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(UnsupportedError, match="llama-cpp-python"):
        LlamaCppLM(written["Q8_0"])


@NEEDS_LLAMA_CPP
@pytest.mark.parametrize("qtype,atol,min_agree", [("F32", 1e-3, 1.0), ("Q8_0", 0.05, 0.95)])
def test_llama_cpp_logits_match_pytorch(written, tiny_lm_dir, qtype, atol, min_agree):
    from edgeft.runtime.lm import TorchLM, load_lm

    ref = TorchLM(tiny_lm_dir).logits(np.asarray(WINDOW))
    got = load_lm(written[qtype], "gguf", 1).logits(np.asarray(WINDOW))
    assert got.shape == ref.shape
    assert float(np.max(np.abs(got - ref))) < atol
    assert float((got.argmax(-1) == ref.argmax(-1)).mean()) >= min_agree


@NEEDS_LLAMA_CPP
def test_export_gguf_reports_quality_and_greedy_matches(tiny_lm_dir, tmp_path):
    from edgeft.exporters.gguf import export_gguf
    from edgeft.runtime.lm import TorchLM, load_lm

    rep = export_gguf(tiny_lm_dir, tmp_path, qtype="Q8_0", quality_ids=[WINDOW], min_top1_agreement=0.9,
                      max_ppl_increase_pct=2.0)
    assert rep["quality"]["passed"] and rep["quality"]["top1_agreement"] >= 0.9
    assert (tmp_path / "model-q8_0.gguf").is_file() and (tmp_path / "tokenizer.json").is_file()
    lm = load_lm(tmp_path, "gguf", 1)
    torch_lm, ref, ids = TorchLM(tiny_lm_dir), [], list(WINDOW[:8])
    for _ in range(8):  # plain greedy on the fp32 model
        ref.append(int(torch_lm.logits(np.asarray(ids))[-1].argmax()))
        ids.append(ref[-1])
    ttft, steps = lm.timed_generate(WINDOW[:8], 8)
    assert len(steps) == 7 and ttft > 0
    assert lm.generate([WINDOW[:8]], 8, [])[0][:4] == ref[:4]


def test_presets_and_pipeline_artifact(written, tmp_path):
    """Each preset's description of its file, and the validate entry the pipeline reads from it."""
    from edgeft.config.loader import load_preset
    from edgeft.config.schema import ExportConfig
    from edgeft.exporters import describe_export
    from edgeft.validate import Artifact

    q4, q8 = load_preset("gguf-q4_0"), load_preset("gguf-q8_0")
    assert (q4.format, q4.options["qtype"], q8.options["qtype"]) == ("gguf", "Q4_0", "Q8_0")
    for preset, qtype in ((q4, "Q4_0"), (q8, "Q8_0")):
        folder = tmp_path / preset.name
        folder.mkdir()
        (folder / f"model-{qtype.lower()}.gguf").write_bytes(written[qtype].read_bytes())
        (folder / "tokenizer.json").write_text("{}")  # the exporter copies the tokenizer beside the file
        describe_export(folder, preset, "causal-lm")
    check_artifact(tmp_path / "gguf-q4_0", name="gguf-q4_0", format="gguf", runtime="gguf", opens="main_file",
                   files=["model-q4_0.gguf"], precision="int4", int8_mode=None)
    art = Artifact.at(tmp_path / "gguf-q4_0", "export")
    assert (art.format, art.precision, art.path.name) == ("gguf", "int4", "model-q4_0.gguf")
    assert Artifact.at(tmp_path / "gguf-q8_0", "export").int8_mode == "weight-only"
    assert ExportConfig(preset="onnx-kv", extra=["genai-int4", "gguf-q4_0"]).extra == ["genai-int4", "gguf-q4_0"]


def test_importance_matrix_is_the_mean_square_input_of_every_linear(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.exporters.gguf import importance_matrix

    wins = [WINDOW[:24], WINDOW[24:40]]
    imat, tokens = importance_matrix(tiny_lm_dir, wins)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), torch_dtype=torch.float32).eval()
    cfg = m.config
    assert tokens == 40
    assert len(imat) == 7 * cfg.num_hidden_layers  # q k v o gate up down per block; tied head: no output.weight
    assert imat["blk.1.ffn_down.weight"].shape == (cfg.intermediate_size,)
    assert imat["blk.0.attn_q.weight"].shape == (cfg.hidden_size,)
    seen = []  # the input of layer 1's down projection, recomputed independently
    h = m.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda mod, a, out: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        for w in wins:
            m(input_ids=torch.tensor([w]), use_cache=False)
    h.remove()
    x = torch.cat(seen)
    np.testing.assert_allclose(imat["blk.1.ffn_down.weight"], (x * x).mean(0).numpy(), rtol=1e-5, atol=1e-9)
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in imat.values())


def test_without_llama_cpp_k_quants_say_how_to_install_and_q4_0_still_writes(monkeypatch, tiny_lm_dir, tmp_path):
    import importlib.util

    from edgeft.errors import UnsupportedError
    from edgeft.exporters.gguf import export_gguf

    import builtins

    real_spec, real_import = importlib.util.find_spec, builtins.__import__

    def no_llama(name, *a, **k):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_spec(name, *a))
    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(UnsupportedError, match=r"Q4_K_M .*llama.cpp's quantizer.*llama-cpp-python"):
        export_gguf(tiny_lm_dir, tmp_path / "k", qtype="Q4_K_M")
    assert not (tmp_path / "k" / "model-q4_k_m.gguf").exists()
    with pytest.raises(UnsupportedError, match="llama-cpp-python"):
        export_gguf(tiny_lm_dir, tmp_path / "k", qtype="Q4_0", quantizer="llama.cpp")
    rep = export_gguf(tiny_lm_dir, tmp_path / "q", qtype="Q4_0")  # auto: the gguf package's Q4_0
    assert rep["quantizer"].startswith("gguf-py") and "Q4_0" in rep["types"]
    assert "llama-cpp-python" in rep["quality"]["skipped"]


@NEEDS_LLAMA_CPP
def test_llama_cpp_quantizer_writes_k_quants_with_the_importance_matrix(tiny_lm_dir, tmp_path):
    import gguf

    from edgeft.exporters.gguf import export_gguf

    calib = [list(range(70, 134)), list(range(140, 204))]  # disjoint from the scored window
    rep = export_gguf(tiny_lm_dir, tmp_path / "k", qtype="Q4_K_M", quality_ids=[WINDOW], calibration_ids=calib,
                      min_top1_agreement=0.5, max_ppl_increase_pct=50.0)
    assert rep["quantizer"].startswith("llama.cpp llama_model_quantize")
    assert rep["imatrix"]["used"] and rep["imatrix"]["tokens"] == 128
    assert rep["quality"]["passed"], rep["quality"]
    r = gguf.GGUFReader(str(tmp_path / "k" / "model-q4_k_m.gguf"))
    assert r.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    # 64-wide rows are not a multiple of 256: llama.cpp falls back from its k-quants to a 32-block type
    body = {t.tensor_type.name for t in r.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    assert body and not body & {"F32", "F16"}, body
    assert not list((tmp_path / "k").glob("*.tmp")) and not list((tmp_path / "k").glob(".*.f32.gguf"))
    # the importance matrix reaches the quantizer: the same type without it writes different codes
    plain = export_gguf(tiny_lm_dir, tmp_path / "p", qtype="IQ4_NL", imatrix=False, quality_ids=[WINDOW],
                        min_top1_agreement=0.0, max_ppl_increase_pct=1e9)
    imat = export_gguf(tiny_lm_dir, tmp_path / "i", qtype="IQ4_NL", calibration_ids=calib, quality_ids=[WINDOW],
                       min_top1_agreement=0.0, max_ppl_increase_pct=1e9)
    assert plain["imatrix"] == {"used": False, "reason": "imatrix: false"} and imat["imatrix"]["used"]
    a, b = (tmp_path / d / "model-iq4_nl.gguf" for d in ("p", "i"))
    assert a.read_bytes() != b.read_bytes()


@NEEDS_LLAMA_CPP
def test_types_that_need_an_importance_matrix_refuse_without_calibration(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.exporters.gguf import export_gguf

    with pytest.raises(ConfigError, match="IQ2_XXS.*importance matrix.*calibration"):
        export_gguf(tiny_lm_dir, tmp_path, qtype="IQ2_XXS")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.gguf"))
