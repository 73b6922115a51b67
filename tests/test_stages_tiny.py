"""Model stages on the tiny LLaMA from conftest: finetune -> merge -> export -> quantize (and qlora).

Each stage's output feeds the next through module-scoped fixtures, so the file fine-tunes, merges
and exports once. The model is random: the tests check plumbing and parity, not task quality.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from artifact_checks import check_artifact
from conftest import SYSTEM_PROMPT
from edgeft.errors import ConfigError, ParityError

# torch.onnx tracing and transformers deprecations are noise here; edgeft's own warnings are not silenced.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean", "ignore:Exporting aten..index operator",
    "ignore:The given NumPy array is not writable", "ignore:mtime may not be reliable",
)

TOL = 2e-3


def ft_config(**kw):
    from edgeft.config.schema import FinetuneConfig

    base = dict(method="lora", epochs=1, max_steps=4, batch_size=8, max_seq_len=64, learning_rate=2e-2,
                warmup_ratio=0.0, eval_examples=2, early_stopping=None, lora={"r": 8, "alpha": 16})
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def records():
    from edgeft.data.intents import generate

    return generate(32, 8, seed=1)


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def finetuned(tiny_lm_dir, records, tmp_path_factory):
    """4 LoRA steps (one epoch of 32 examples, batch 8); checkpoints kept in ``work`` for the resume test."""
    from edgeft.finetune import finetune

    root = tmp_path_factory.mktemp("finetune")
    train, ev = records
    metrics = finetune(tiny_lm_dir, train, ev, root / "out", ft_config(), SYSTEM_PROMPT, work_dir=root / "work")
    return {"root": root, "out": root / "out", "work": root / "work", "metrics": metrics}


@pytest.fixture(scope="module")
def merged(finetuned, tiny_lm_dir, records, tok, tmp_path_factory):
    from edgeft.data.templates import conversation_text
    from edgeft.merge import merge

    out = tmp_path_factory.mktemp("merge") / "merged"
    samples = [conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]) for r in records[1][:2]]
    report = merge(finetuned["out"] / "adapter", out, base_model=tiny_lm_dir, tolerance=TOL, sample_texts=samples)
    return {"dir": out, "report": report}


@pytest.fixture(scope="module")
def exported(merged, records, tok, tmp_path_factory):
    from edgeft.data.templates import prompt_ids
    from edgeft.exporters import export

    out = tmp_path_factory.mktemp("export") / "onnx"
    r0 = records[1][0]
    ids = prompt_ids(tok, SYSTEM_PROMPT, r0["prompt"]) + tok(r0["response"]).input_ids[:4]
    report = export(merged["dir"], out, preset="onnx-kv", tolerance=TOL, sample_ids=ids)
    return {"dir": out, "report": report}


@pytest.fixture(scope="module")
def quality_windows(records, tok):
    from edgeft.data.templates import conversation_text
    from edgeft.metrics.lm import windows

    text = "".join(conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]) for r in records[1])
    return windows(tok(text, add_special_tokens=False).input_ids, 64, 64, 256)


def _sample_ids(tok, records, n=2):
    from edgeft.data.templates import conversation_text

    return [tok(conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]), add_special_tokens=False,
                return_tensors="pt").input_ids for r in records[1][:n]]


# --------------------------------------------------------------------------- finetune


def test_finetune_loss_decreases_and_writes_adapter(finetuned):
    m = finetuned["metrics"]
    losses = [h["loss"] for h in m["loss_history"]]
    assert len(losses) == 4, m["loss_history"]
    assert losses[0] > losses[-1], f"loss did not go down over 4 steps at lr 2e-2: {losses}"
    assert m["steps"] == 4 and m["resumed"] is False
    assert m["method"] == "lora" and m["objective"] == "sft"
    adapter = finetuned["out"] / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer.json").is_file() and (adapter / "chat_template.jinja").is_file()
    on_disk = json.loads((finetuned["out"] / "metrics.json").read_text())
    assert on_disk["eval_history"], "metrics.json has no eval_history"
    ev = on_disk["eval_history"][-1]
    assert math.isfinite(ev["eval_loss"]) and "eval_exact_match" in ev and "eval_json_valid" in ev
    assert on_disk["loss_history"] == m["loss_history"]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_only_lora_params_are_trainable(method, tiny_lm_dir, finetuned):
    from edgeft.finetune import METHODS

    if method == "qlora":
        _require_bnb_cpu(tiny_lm_dir)
    cfg = ft_config(method=method)
    m = METHODS.get(method)
    model = m.prepare(m.load_model(tiny_lm_dir, cfg, "causal-lm"), cfg)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "no trainable parameters"
    assert all("lora_" in n for n in trainable), sorted(n for n in trainable if "lora_" not in n)
    # all-linear LoRA r=8 on q,k,v,o,gate,up,down of 2 layers: r * (in + out) per module, lm_head excluded.
    dims = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    expected = 2 * sum(8 * (i + o) for i, o in dims)
    assert sum(trainable.values()) == expected
    if method == "lora":
        assert finetuned["metrics"]["trainable_params"] == expected


def test_finetune_resumes_from_checkpoint(finetuned, tiny_lm_dir, records, tmp_path):
    from edgeft.finetune import finetune

    work = tmp_path / "work"
    shutil.copytree(finetuned["work"], work)
    assert any((work / "checkpoints").glob("checkpoint-*")), "the first run left no checkpoint to resume from"
    train, ev = records
    m = finetune(tiny_lm_dir, train, ev, tmp_path / "out", ft_config(max_steps=6), SYSTEM_PROMPT, work_dir=work)
    assert m["resumed"] is True
    assert m["steps"] == 6
    assert [h["step"] for h in m["loss_history"]][-2:] == [5, 6]
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- merge


def test_merge_parity_and_reload(merged, finetuned, tiny_lm_dir, tok, records):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rep = merged["report"]
    assert rep["passed"] and rep["max_abs_logit_diff"] <= TOL and rep["samples"] == 2
    assert json.loads((merged["dir"] / "merge_report.json").read_text())["passed"]
    assert not list(merged["dir"].glob("adapter_*")), "merged folder still holds adapter files"
    cfg = json.loads((merged["dir"] / "config.json").read_text())
    assert "quantization_config" not in cfg

    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(base, str(finetuned["out"] / "adapter")).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(str(merged["dir"]), dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        for ids in _sample_ids(tok, records):
            want = peft_model(input_ids=ids).logits
            got = reloaded(input_ids=ids).logits
            assert float((want - got).abs().max()) <= TOL
            # the adapter must have changed something, or the parity above proves nothing
            assert float((plain(input_ids=ids).logits - got).abs().max()) > 1e-4


def test_merge_parity_error_names_the_failure(finetuned, tiny_lm_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from edgeft.merge import merge

    adapter = tmp_path / "adapter"
    shutil.copytree(finetuned["out"] / "adapter", adapter)
    f = adapter / "adapter_model.safetensors"
    weights = load_file(str(f))
    g = torch.Generator().manual_seed(0)
    weights = {k: (v + torch.randn(v.shape, generator=g) if "lora_B" in k else v) for k, v in weights.items()}
    save_file(weights, str(f))
    out = tmp_path / "merged"
    with pytest.raises(ParityError, match=r"merge: max \|logit diff\|.*> tolerance 1e-12"):
        merge(adapter, out, base_model=tiny_lm_dir, tolerance=1e-12)
    assert not (out / "model.safetensors").exists(), "a merge that failed parity must not write weights"


# --------------------------------------------------------------------------- export


def test_export_parity_prefill_and_cached_decode(exported):
    rep = exported["report"]
    assert (exported["dir"] / "model.onnx").is_file()
    assert rep["with_past"] is True and rep["max_abs_diff"] < TOL
    steps = {c["step"] for c in rep["parity"]}
    assert steps == {"prefill", "decode"}
    for step in ("prefill", "decode"):
        names = {c["name"] for c in rep["parity"] if c["step"] == step}
        # 2 layers: logits + present.{0,1}.{key,value}
        assert names == {"logits", *(f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value"))}, names
    assert all(c["passed"] and c["max_abs_diff"] < TOL for c in rep["parity"])
    on_disk = json.loads((exported["dir"] / "export_report.json").read_text())
    assert on_disk["max_abs_diff"] == rep["max_abs_diff"]
    check_artifact(exported["dir"], name="onnx-kv", kind="causal-lm", format="onnx", precision="fp32", stage="export",
                   producer="onnx-kv", runtime="onnx", main_file="model.onnx", size_bytes=rep["size_bytes"])


def test_ort_generate_matches_torch_greedy(exported, merged, tok, records):
    from edgeft.data.templates import prompt_ids, stop_ids
    from edgeft.runtime.lm import OrtLM, TorchLM

    by_len = sorted((prompt_ids(tok, SYSTEM_PROMPT, r["prompt"]) for r in records[1]), key=len)
    prompts = [by_len[0], by_len[len(by_len) // 2], by_len[-1]]
    assert len(prompts[0]) < len(prompts[-1]), "want prompts of different lengths to exercise left padding"
    stops = stop_ids(tok)
    ort_lm, torch_lm = OrtLM(exported["dir"], threads=2), TorchLM(merged["dir"])
    for p in prompts:  # one at a time (no padding)
        assert ort_lm.generate([p], 12, stops) == torch_lm.generate([p], 12, stops)
    batched = ort_lm.generate(prompts, 12, stops)  # left-padded batch
    assert batched == torch_lm.generate(prompts, 12, stops)
    assert sum(len(o) for o in batched) > 0


# --------------------------------------------------------------------------- quantize


def _scheme_names():
    from edgeft.quantize import SCHEMES

    return SCHEMES.names()


def _onnx_lm_scheme_names():
    """Schemes that take this ONNX decoder as is. Covered by their own tests instead: PyTorch-input schemes
    (tests/quantize/test_torch_schemes.py), ``auto`` (tests/quantize/test_auto.py) and full-integer int8, which
    refuses a decoder with a float KV cache (tests/quantize/test_full_integer.py)."""
    from edgeft.quantize import SCHEMES

    return [n for n in SCHEMES.names()
            if SCHEMES.get(n).input_format == "onnx" and n not in ("auto", "int8-full-integer")]


@pytest.mark.parametrize("scheme", _onnx_lm_scheme_names())
def test_quantize_scheme(scheme, exported, finetuned, quality_windows, tmp_path):
    from edgeft.quantize import SCHEMES, quantize
    from edgeft.runtime.lm import OrtLM

    assert quality_windows and all(len(w) >= 2 for w in quality_windows)
    out = tmp_path / scheme
    s = SCHEMES.get(scheme)
    calibration = quality_windows[::-1] if s.needs_calibration else None  # mechanics only: any windows will do
    adapter = finetuned["out"] / "adapter" if s.needs_adapter else None  # the LoRA adapter this export was merged from
    rep = quantize(exported["dir"], out, scheme, quality_ids=quality_windows, calibration_ids=calibration,
                   adapter_dir=adapter)
    assert rep["scheme"] == scheme and rep["precision"] == s.precision
    assert rep["precision"] in ("int4", "int8")
    assert 0 < rep["size_bytes"] < rep["input_size_bytes"], rep
    for k in ("perplexity", "perplexity_input", "top1_agreement", "kl"):
        assert k in rep and math.isfinite(rep[k]), (k, rep.get(k))
    assert 0.0 <= rep["top1_agreement"] <= 1.0 and rep["kl"] >= -1e-9
    assert rep["quality_tokens"] == sum(len(w) for w in quality_windows)
    assert json.loads((out / "quantize_report.json").read_text())["size_bytes"] == rep["size_bytes"]
    assert (out / "tokenizer.json").is_file(), "tokenizer files must travel with the artifact"
    a = check_artifact(out, name=scheme, kind="causal-lm", format="onnx", precision=s.precision,
                       int8_mode=s.int8_mode, stage="quantize", producer=scheme, size_bytes=rep["size_bytes"])
    assert {"tokenizer.json", "quantize_report.json"} <= set(a.files)
    logits = OrtLM(out).logits(np.asarray(quality_windows[0]))
    assert logits.shape == (len(quality_windows[0]), 512) and np.isfinite(logits).all()


@pytest.mark.parametrize("scheme", _scheme_names())
def test_quantize_unknown_option_lists_valid_ones(scheme, exported, tmp_path):
    from edgeft.quantize import SCHEMES, quantize

    with pytest.raises(ConfigError) as ei:
        quantize(exported["dir"], tmp_path / "q", scheme, {"blocksize": 32})
    msg = str(ei.value)
    assert "blocksize" in msg and "valid options" in msg
    for opt in SCHEMES.get(scheme).options:
        assert opt in msg
    assert not (tmp_path / "q").exists()


def test_quantize_unknown_scheme_lists_valid_ones(exported, tmp_path):
    from edgeft.quantize import SCHEMES, quantize

    with pytest.raises(ConfigError) as ei:
        quantize(exported["dir"], tmp_path / "q", "int4-rnt")
    assert "int4-rtn" in str(ei.value) and all(n in str(ei.value) for n in SCHEMES.names())


# --------------------------------------------------------------------------- qlora


_BNB: dict[str, str | None] = {}


def _require_bnb_cpu(model_dir: Path):
    """Skip unless bitsandbytes loads the tiny model in 4-bit and runs a forward pass here (checked once)."""
    if "why" not in _BNB:
        try:
            import torch

            from edgeft.finetune import METHODS

            model = METHODS.get("qlora").load_model(model_dir, ft_config(method="qlora"), "causal-lm")
            with torch.no_grad():
                model(input_ids=torch.tensor([[5, 6, 7]]))
            _BNB["why"] = None
        except Exception as e:  # noqa: BLE001 - any failure means: not usable here
            _BNB["why"] = f"bitsandbytes 4-bit does not work on this machine: {type(e).__name__}: {e}"
    if _BNB["why"]:
        pytest.skip(_BNB["why"])


def test_qlora_trains_and_merges_into_fp32_base(tiny_lm_dir, records, tok, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.data.templates import conversation_text
    from edgeft.finetune import finetune
    from edgeft.merge import merge

    _require_bnb_cpu(tiny_lm_dir)
    train, ev = records
    m = finetune(tiny_lm_dir, train[:16], ev[:2], tmp_path / "out", ft_config(method="qlora", max_steps=2,
                                                                                 eval_examples=0),
                 SYSTEM_PROMPT, work_dir=tmp_path / "work")
    assert m["method"] == "qlora" and m["steps"] == 2
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    samples = [conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]) for r in ev[:2]]
    rep = merge(adapter, tmp_path / "merged", base_model=tiny_lm_dir, tolerance=TOL, sample_texts=samples)
    assert rep["passed"]
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in cfg, "merged model must be saved from an un-quantized base"
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any("Linear4bit" in type(mod).__name__ for mod in model.modules())
