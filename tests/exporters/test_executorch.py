"""ExecuTorch (.pte, XNNPACK) export of a tiny LLaMA and a tiny BERT classifier: every preset exports
and passes its own check, the runtime reproduces PyTorch (logits, greedy tokens) through the chunked
prefill and the one-token decode, bad input and unknown metadata fail in one line, and a pipeline
run validates the pte artifact on phone-cpu.

Lowering through ``to_edge_transform_and_lower`` costs tens of seconds per program even for these
tiny models (Python graph passes, 2 cores), so each program is exported once per module."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.skipif(importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torchao") is None,
                       reason="executorch/torchao not installed (pip install 'edgeft[executorch]')"),
]

PRESETS = ["executorch-fp32", "executorch-8da4w", "executorch-int8w"]
SAMPLE = list(range(5, 29))


@pytest.fixture(scope="module")
def lm_exports(tiny_lm_dir, tmp_path_factory):
    """preset -> (folder, report), exported on first use."""
    from edgeft.exporters import export

    root = tmp_path_factory.mktemp("pte")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(preset: str) -> tuple[Path, dict]:
        if preset not in cache:
            out = root / preset
            cache[preset] = (out, export(tiny_lm_dir, out, preset=preset, sample_ids=SAMPLE))
        return cache[preset]

    return get


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_exports_with_report_and_parity(lm_exports, preset):
    from edgeft.config.loader import load_preset

    out, rep = lm_exports(preset)
    opts = load_preset(preset).options
    assert {p.name for p in out.iterdir()} >= {"config.json", "executorch.json", "export_report.json", "model.pte",
                                                "tokenizer.json", "tokenizer_config.json"}
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())
    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["format"] == "pte" and rep["kind"] == "causal-lm" and rep["max_cache_len"] == opts["max_cache_len"]
    meta = json.loads((out / "executorch.json").read_text())
    assert meta["shapes"] == "static" and meta["methods"] == ["forward", "prefill"] and meta["prefill_chunk"] == 32
    assert rep["shapes"] == "static" and rep["prefill_chunk"] == 32
    assert rep["size_bytes"] == (out / "model.pte").stat().st_size > 0
    assert rep["export_seconds"] > 0 and rep["executorch"]["xnnpack_partitions"] > 0
    precision, mode = {"executorch-8da4w": ("int4", "dynamic"), "executorch-int8w": ("int8", "dynamic")}.get(
        preset, ("fp32", None))
    check_artifact(out, name=preset, kind="causal-lm", format="pte", precision=precision, int8_mode=mode,
                   stage="export", producer=preset, runtime="pte", main_file="model.pte", size_bytes=rep["size_bytes"])
    parity = rep["parity"]
    assert parity["decode_steps"] == 4 and parity["tokens"] == len(SAMPLE)
    if preset == "executorch-fp32":
        assert rep["quantization"] == "none" and rep["max_abs_diff"] <= 2e-3
        assert all(c["passed"] for c in parity["checks"])
    else:
        assert rep["top1_agreement"] >= opts["min_top1_agreement"]
        assert rep["quality"]["top1_agreement"] >= opts["min_top1_agreement"]
        assert rep["max_abs_diff"] > 1e-5  # really quantized
    quant = rep["executorch"]["quantized"]
    if preset == "executorch-8da4w":
        assert rep["group_size"] == 32 and "PerGroup(32)" in quant["linear"]
        assert "int8, PerAxis(0)" in quant["lm_head"]  # lm_head: int8
        names = quant["int8_linears"]["names"]  # int8_linears: [v_proj, down_proj], two layers
        assert quant["int8_linears"]["suffixes"] == ["v_proj", "down_proj"]
        assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["down_proj"] * 2 + ["v_proj"] * 2
        assert "int8, PerAxis(0)" in quant["int8_linears"]["config"]
    if preset == "executorch-int8w":
        assert "int8, PerAxis(0)" in quant["linear"]
        assert "int8" in quant["embedding"]


def test_int8_linears_get_int8_weights(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.exporters.executorch import quantize_model

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    done = quantize_model(model, "8da4w", 32, "int8", "same", ["v_proj"])
    assert done["int8_linears"]["names"] == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    mods = dict(model.named_modules())
    bits = {n: str(getattr(mods[n].weight, "target_dtype", getattr(mods[n].weight, "dtype", "")))
            for n in ("model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.q_proj")}
    assert "int8" in bits["model.layers.0.self_attn.v_proj"] and "int4" in bits["model.layers.0.self_attn.q_proj"]


def test_int8_linears_suffix_matching_nothing_fails_in_one_line(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.exporters.executorch import export_executorch

    with pytest.raises(ConfigError) as e:
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="8da4w", int8_linears=["v_proj", "vproj"])
    msg = str(e.value)
    assert "int8_linears" in msg and "'vproj'" in msg and "v_proj" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="int8_linears applies to quantization 8da4w"):
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="none", int8_linears=["v_proj"])
    with pytest.raises(ConfigError, match="prefill_chunk=64 must be < max_cache_len=64"):
        export_executorch(tiny_lm_dir, tmp_path / "o", max_cache_len=64, prefill_chunk=64)
    assert not (tmp_path / "o").exists()


def test_quantized_programs_are_smaller(lm_exports):
    sizes = {p: lm_exports(p)[1]["size_bytes"] for p in PRESETS}
    assert sizes["executorch-8da4w"] < sizes["executorch-int8w"] < sizes["executorch-fp32"]


def test_rewrite_keeps_each_decoder_layer_in_one_xnnpack_partition(lm_exports, tiny_lm_dir):
    """The shipped (rewritten) program against transformers' own attention and RMSNorm lowered the same way: RMSNorm's
    mean and SDPA's decomposition no longer fall outside the delegate, and the partitions drop from about five a
    layer to about one (the KV-cache write stays outside). The parity tests above run on the rewritten program."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.exporters.executorch import export_decoder_program, lower

    out, rep = lm_exports("executorch-fp32")
    assert rep["xnnpack_rewrite"] is True
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    layers = model.config.num_hidden_layers
    plain = lower(export_decoder_program(model, 512, 32, rewrite=False))[1]
    shipped = rep["executorch"]
    assert "aten.mean.dim" in plain["portable_ops"] and "aten.mean.dim" not in shipped["portable_ops"]
    assert "aten.any.dim" in plain["portable_ops"] and "aten.any.dim" not in shipped["portable_ops"]
    assert shipped["xnnpack_partitions"] <= 2 * (layers + 5) < plain["xnnpack_partitions"]


def test_rewritten_attention_and_norm_equal_transformers_eager():
    """The rewrite's pieces in PyTorch, no lowering: grouped-query bmm attention under a causal additive mask equals
    transformers' eager attention; only LLaMA-form RMSNorms are swapped; what it does not implement is refused."""
    import torch
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, eager_attention_forward
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from edgeft.errors import UnsupportedError
    from edgeft.exporters.executorch import _bmm_attention, _is_llama_rms_norm, _rms_norm_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 3, False
    q, k, v = torch.randn(1, 6, 5, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    mask = torch.where(torch.arange(12)[None, :] <= torch.arange(5)[:, None] + 4, 0.0, torch.finfo(torch.float32).min)
    mask = mask[None, None]
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling=8 ** -0.5)
    got, _ = _bmm_attention(module, q, k, v, mask, scaling=8 ** -0.5)
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(UnsupportedError, match="sliding_window.*xnnpack_rewrite: false"):
        _bmm_attention(module, q, k, v, mask, scaling=1.0, sliding_window=4)

    assert _is_llama_rms_norm(LlamaRMSNorm(8)) and _is_llama_rms_norm(Qwen2RMSNorm(8))
    assert not _is_llama_rms_norm(GemmaRMSNorm(8)) and not _is_llama_rms_norm(torch.nn.LayerNorm(8))
    norm = LlamaRMSNorm(8)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.register_buffer("_edgeft_mean_row", torch.full((1, 8), 1 / 8))
    x = torch.randn(2, 3, 8)
    assert torch.allclose(_rms_norm_forward(norm, x), norm(x), atol=1e-6)


def test_two_methods_store_the_weights_once(lm_exports, tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    out, rep = lm_exports("executorch-fp32")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32)
    weights = sum(p.numel() * 4 for p in model.parameters())  # tied head counted once
    kv = 2 * 2 * 512 * 2 * 16 * 4  # layers x (K, V) x slots x kv heads x head dim x fp32, if planned into the file
    assert rep["size_bytes"] < 1.3 * (2 * weights) + kv  # two copies would be ~2x (head and embedding untied)


def test_fp32_runtime_matches_pytorch_logits_and_greedy_tokens(lm_exports, tiny_lm_dir):
    from edgeft.runtime.lm import TorchLM, load_lm

    out, _ = lm_exports("executorch-fp32")
    lm = load_lm(out, "pte", threads=2)
    ref = TorchLM(tiny_lm_dir)
    ids = np.asarray(SAMPLE, np.int64)
    assert np.max(np.abs(lm.logits(ids) - ref.logits(ids))) < 1e-3
    prompts = [SAMPLE[:7], SAMPLE[3:15]]
    eos = [0]
    assert lm.generate(prompts, 12, eos) == ref.generate(prompts, 12, eos)
    ttft, steps = lm.timed_generate(SAMPLE[:6], 5)
    assert ttft > 0 and len(steps) == 4
    assert lm.threads == 2 and lm.threads_source == "set"


def test_generate_command_detects_a_pte_folder(lm_exports, tiny_lm_dir):
    from edgeft.chat import generate

    out, _ = lm_exports("executorch-fp32")
    assert generate(out, "set a timer", max_new_tokens=6) == generate(tiny_lm_dir, "set a timer", max_new_tokens=6)


# chunked prefill: a small program (cache 36, chunks of 8) so prompts span several chunks and the last
# chunk's padding can pass the end of the cache (36 is not a multiple of 8)
CACHE, CHUNK = 36, 8


@pytest.fixture(scope="module")
def chunked(tiny_lm_dir, tmp_path_factory) -> Path:
    from edgeft.exporters.executorch import export_executorch

    out = tmp_path_factory.mktemp("chunked") / "pte"
    rep = export_executorch(tiny_lm_dir, out, max_cache_len=CACHE, prefill_chunk=CHUNK, sample_ids=SAMPLE)
    assert rep["prefill_chunk"] == CHUNK and rep["max_abs_diff"] <= 2e-3
    return out


class _Spy:
    """Wraps a loaded method, recording the length of every call."""

    def __init__(self, method, calls: list, name: str):
        self.method, self.calls, self.name = method, calls, name

    def execute(self, args):
        self.calls.append((self.name, int(args[0].shape[1]), int(args[1][0])))
        return self.method.execute(args)


def _spied(path: Path):
    from edgeft.runtime.executorch import ExecuTorchLM

    lm, calls = ExecuTorchLM(path, threads=2), []
    lm.methods = {k: _Spy(m, calls, k) for k, m in lm.methods.items()}
    lm.method = lm.methods["forward"]
    return lm, calls


def test_chunked_prefill_then_decode_matches_pytorch(chunked, tiny_lm_dir):
    from edgeft.runtime.lm import TorchLM

    lm, calls = _spied(chunked)
    ref = TorchLM(tiny_lm_dir)
    ids = [int(t) for t in (np.arange(21) * 7 + 3) % 60]  # 21 tokens: chunks of 8, 8 and 5 (padded to 8)
    want = ref.logits(np.asarray(ids, np.int64))
    got = [lm._run(ids[:16 + 1], 0)]  # 17 = 8 + 8 + 1: the 1-token tail goes through forward
    assert [c[:2] for c in calls] == [("prefill", 8), ("prefill", 8), ("forward", 1)]
    calls.clear()
    got = [lm._run(ids[:13], 0)]
    assert [c[:2] for c in calls] == [("prefill", 8), ("prefill", 8)]  # 13 = 8 + 5 padded: logits of 5 kept
    got += [lm._run([ids[i]], i) for i in range(13, 21)]  # cached decode steps over the padded slots 13..15
    got = np.concatenate(got)
    assert got.shape == want.shape and np.max(np.abs(got - want)) < 1e-3
    assert np.max(np.abs(lm.logits(np.asarray(ids)) - want)) < 1e-3
    prompts, eos = [ids[:11], ids[2:20]], [0]
    assert lm.generate(prompts, 10, eos) == ref.generate(prompts, 10, eos)


def test_padded_chunk_past_the_cache_runs_the_tail_one_token_at_a_time(chunked, tiny_lm_dir):
    from edgeft.runtime.lm import TorchLM

    lm, calls = _spied(chunked)
    ids = np.asarray((np.arange(CACHE - 1) * 5 + 1) % 60, np.int64)  # 35: 4 chunks of 8, tail of 3 at 32
    got = lm.logits(ids)
    assert [c[:2] for c in calls] == [("prefill", 8)] * 4 + [("forward", 1)] * 3  # 32 + 8 > 36
    assert np.max(np.abs(got - TorchLM(tiny_lm_dir).logits(ids))) < 1e-3
    assert len(lm.generate([ids.tolist()], 1, [])[0]) == 1  # 35 + 1 fills the cache exactly


def test_prompt_longer_than_cache_is_refused(chunked):
    from edgeft.errors import ModelSourceError
    from edgeft.runtime.executorch import ExecuTorchLM

    lm = ExecuTorchLM(chunked)
    with pytest.raises(ModelSourceError, match="max_cache_len"):
        lm.logits(np.arange(CACHE + 1) % 50)
    with pytest.raises(ModelSourceError, match="max_cache_len"):
        lm.generate([list(range(CACHE - 2))], 3, [])


def test_runtime_reads_the_layout_from_the_metadata(chunked, tmp_path):
    import shutil

    from edgeft.errors import ModelSourceError
    from edgeft.runtime.executorch import ExecuTorchLM

    folder = tmp_path / "pte"
    shutil.copytree(chunked, folder)
    meta_file = folder / "executorch.json"
    meta = json.loads(meta_file.read_text())
    lm = ExecuTorchLM(folder)
    assert (lm.shapes, lm.chunk, sorted(lm.methods)) == ("static", CHUNK, ["forward", "prefill"])
    old = {k: v for k, v in meta.items() if k not in ("shapes", "prefill_chunk")}
    meta_file.write_text(json.dumps(dict(old, methods=["forward"])))  # a file written before the static layout
    lm = ExecuTorchLM(folder)
    assert (lm.shapes, lm.chunk, list(lm.methods)) == ("dynamic", None, ["forward"])
    for bad in ({"shapes": "static"}, {"shapes": "static", "prefill_chunk": CACHE}, {"shapes": "ragged"},
                {"shapes": "static", "prefill_chunk": CHUNK, "methods": ["forward", "decode"]}):
        meta_file.write_text(json.dumps({**old, "methods": ["forward", "prefill"], **bad}))
        with pytest.raises(ModelSourceError) as e:
            ExecuTorchLM(folder)
        assert "unknown program layout" in str(e.value) and "\n" not in str(e.value)


def test_not_an_hf_folder_fails_in_one_line(tmp_path):
    from edgeft.errors import ModelSourceError
    from edgeft.exporters import export

    (tmp_path / "src").mkdir()
    with pytest.raises(ModelSourceError) as e:
        export(tmp_path / "src", tmp_path / "out", preset="executorch-8da4w")
    assert "no config.json" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_option_and_quantization_are_config_errors(tiny_lm_dir, tmp_path):
    from edgeft.errors import ConfigError
    from edgeft.exporters.executorch import export_executorch

    with pytest.raises(ConfigError, match="qtype: unknown option"):
        export_executorch(tiny_lm_dir, tmp_path / "o", qtype="Q4_0")
    with pytest.raises(ConfigError, match="quantization: 'int3' is not a valid choice.*8da4w"):
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="int3")


def test_weight_only_int8_linears_are_refused_with_the_reason(tiny_lm_dir, tmp_path):
    from edgeft.errors import UnsupportedError
    from edgeft.exporters.executorch import export_executorch

    with pytest.raises(UnsupportedError, match="wrong.*8da8w"):
        export_executorch(tiny_lm_dir, tmp_path / "o", quantization="int8w")


def test_missing_runtime_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from edgeft.errors import UnsupportedError
    from edgeft.exporters import executorch as ex

    real = builtins.__import__

    def no_executorch(name, *a, **k):
        if name.startswith("executorch"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(UnsupportedError, match=r"pip install 'edgeft\[executorch\]'"):
        ex._exir()


# --------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    spec = importlib.util.spec_from_file_location(
        "_edgeft_tests_finetune_conftest", Path(__file__).resolve().parents[1] / "finetune" / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    src = helpers.build_tiny_cls_bert(tmp_path_factory.mktemp("bert") / "model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=2).eval()
    model.save_pretrained(src, safe_serialization=True)
    return src


def test_classifier_pte_logits_match_pytorch(cls_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgeft.config.schema import StaticShapes
    from edgeft.exporters import export
    from edgeft.exporters.onnx_encoder import module_logits
    from edgeft.runtime.bench import run_encoder_inline
    from edgeft.runtime.executorch import ExecuTorchClassifier
    from edgeft.validate import Artifact
    from edgeft.validate.encoders import classifier_logits, fixed_shape

    texts = ["a fine film", "dull and far too long for what it says", "ok"]
    rep = export(cls_dir, tmp_path / "cls", preset="executorch-fp32", sample_texts=texts,
                 static_shapes=StaticShapes(batch=1, seq=32))
    assert rep["kind"] == "classifier" and rep["seq_len"] == 32 and rep["max_abs_diff"] <= 2e-3
    tok = AutoTokenizer.from_pretrained(str(cls_dir))
    ref = module_logits(AutoModelForSequenceClassification.from_pretrained(str(cls_dir), dtype=torch.float32).eval(),
                        tok, texts + ["something new"], max_length=32)
    got = ExecuTorchClassifier(tmp_path / "cls", threads=2).logits(tok, texts + ["something new"])
    assert got.shape == ref.shape == (4, 2) and np.max(np.abs(got - ref)) < 1e-4
    art = Artifact("cls-pte", tmp_path / "cls", "pte")
    assert fixed_shape(art) == (1, 32)
    assert np.allclose(classifier_logits(art, art, tok, texts, 32, 2), got[:3], atol=1e-6)
    lat = run_encoder_inline(str(tmp_path / "cls"), 2, 1, 32, 0, 2, fmt="pte")
    assert lat["per_inference_ms_p50"] > 0 and lat["seq_len"] == 32


# --------------------------------------------------------------------------- pipeline


def test_pipeline_validates_the_pte_artifact_on_phone_cpu(tiny_lm_dir, tmp_path):
    import edgeft
    from conftest import tiny_recipe_dict, write_recipe

    data = tiny_recipe_dict(tiny_lm_dir, name="tiny-pte")
    data["export"]["extra"] = ["executorch-8da4w"]
    data["quantize"] = []
    data["validate"]["devices"] = ["host", "phone-cpu"]
    data["validate"]["include_base"] = False
    res = edgeft.run(write_recipe(tmp_path / "tiny-pte.yaml", data), runs_root=tmp_path / "runs")
    rep = res.report.to_dict()
    a = rep["artifacts"]["executorch-8da4w"]
    assert a["format"] == "pte" and a["precision"] == "int4" and a["int8_mode"] == "dynamic"
    assert a["size_bytes"] == (res.run_dir / "export" / "executorch-8da4w" / "model.pte").stat().st_size
    assert 0.0 <= a["accuracy"]["exact_match"] <= 1.0 and a["accuracy"]["perplexity"] > 1.0
    assert a["latency"]["decode_tok_s"] > 0 and a["latency"]["label"] == "measured-host"
    phone = rep["devices"]["phone-cpu"]["results"]["executorch-8da4w"]
    assert phone["compatible"], phone["reasons"]
    assert phone["passed"] is True, phone["gates"]
    host = rep["devices"]["host"]["results"]["executorch-8da4w"]
    assert host["compatible"], host["reasons"]  # the host profile runs pte as well (devices/host.yaml formats)
