"""int8-static (ORT quantize_static, QDQ) on the tiny LLaMA from conftest, exported to ONNX with KV cache.

Calibration: 4 windows of 32 tokens of rendered *training* conversations. Quality is checked on
a held-out window of 128 tokens of rendered *eval* conversations (4x the calibration length, so
positions and decode steps beyond what calibration saw are covered).

Tolerances, measured on this model (random weights; fp32 logits: |max| 1.4, std 0.17, median
top-1 margin 0.61, 1% of positions with a margin under 0.01): with each calibrate method the mean
|logit error| was 0.003-0.004 and top-1 agreed on 98.4-99.2% of the 128 positions; every flip was
at a near tie (fp32 top-2 margin under 0.03). The bounds below leave about 3x room: top-1
agreement >= 0.95, mean |error| <= 0.015, and no flip where fp32's margin exceeds 0.1 (a sixth
of the median margin). Greedy decoding (4 prompts x 40 tokens, through the KV cache) matched
fp32 token for token with every method; the test asks 3 of 4 sequences.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SYSTEM_PROMPT
from edgeft.errors import ConfigError, UnsupportedError

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean",
    "ignore:Exporting aten..index operator", "ignore:The given NumPy array is not writable",
)

SEQ = 32
N_CALIB = 4
MIN_TOP1 = 0.95
MAX_MEAN_ABS = 0.015
CLEAR_MARGIN = 0.1


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def records():
    from edgeft.data.intents import generate

    return generate(32, 8, seed=1)


@pytest.fixture(scope="module")
def onnx_dir(tiny_lm_dir, tmp_path_factory):
    from edgeft.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny-onnx") / "onnx"
    export_onnx(tiny_lm_dir, out, opset=18)
    return out


def _render(tok, recs) -> list[int]:
    from edgeft.data.templates import conversation_text

    text = "".join(conversation_text(tok, SYSTEM_PROMPT, r["prompt"], r["response"]) for r in recs)
    return tok(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def calibration(tok, records):
    from edgeft.metrics.lm import windows

    wins = windows(_render(tok, records[0]), SEQ, SEQ, N_CALIB * SEQ)
    assert len(wins) == N_CALIB and all(len(w) == SEQ for w in wins)
    return [w.tolist() for w in wins]


@pytest.fixture(scope="module")
def heldout(tok, records):
    ids = np.asarray(_render(tok, records[1])[:128], np.int64)
    assert len(ids) == 128
    return ids


@pytest.fixture(scope="module")
def reference(onnx_dir, heldout, tok, records):
    from edgeft.data.templates import prompt_ids
    from edgeft.runtime.lm import OrtLM

    lm = OrtLM(onnx_dir)
    prompts = [prompt_ids(tok, SYSTEM_PROMPT, r["prompt"]) for r in records[1][:4]]
    return {"logits": lm.logits(heldout), "prompts": prompts,
            "greedy": lm.generate(prompts, 40, [tok.eos_token_id])}


@pytest.fixture(scope="module")
def quantized(onnx_dir, calibration, tmp_path_factory):
    """One int8-static artifact per calibrate method (built once, shared by the tests)."""
    from edgeft.quantize import quantize

    root = tmp_path_factory.mktemp("int8-static")
    made = {}

    def get(method: str) -> tuple:
        if method not in made:
            out = root / method
            rep = quantize(onnx_dir, out, "int8-static", {"calibrate_method": method}, calibration_ids=calibration)
            made[method] = (out, rep)
        return made[method]

    return get


def _logit_checks(ref: np.ndarray, cand: np.ndarray) -> dict:
    top2 = np.sort(ref, -1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flipped = ref.argmax(-1) != cand.argmax(-1)
    return {"top1": float(1 - flipped.mean()), "mean_abs": float(np.abs(ref - cand).mean()),
            "clear_flips": int((flipped & (margin > CLEAR_MARGIN)).sum())}


def test_registered():
    from edgeft.quantize import SCHEMES

    assert "int8-static" in SCHEMES.names()
    s = SCHEMES.get("int8-static")
    assert s.needs_calibration is True and s.precision == "int8" and s.int8_mode == "static"
    for opt in ("per_channel", "activation_type", "calibrate_method", "op_types_to_quantize", "nodes_to_exclude",
                "full_integer"):
        assert opt in s.options, opt
    assert s.options["op_types_to_quantize"][0] == ["MatMul"]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_each_method(method, quantized, onnx_dir, reference, heldout, tok):
    from edgeft.runtime.lm import OrtLM
    from edgeft.validate.compat import inspect_onnx

    out, rep = quantized(method)
    assert rep["scheme"] == "int8-static" and rep["int8_mode"] == "static" and rep["precision"] == "int8"
    assert rep["size_bytes"] < rep["input_size_bytes"], rep
    opts = rep["options"]
    assert opts["calibrate_method"] == method
    assert opts["calibration_windows"] == N_CALIB and opts["calibration_tokens"] == N_CALIB * SEQ
    # 2 layers x 7 projections + the LM head (its Transpose(embedding) constant-folded by quant_pre_process);
    # attention QK^T / scores x V and the RoPE MatMul stay fp32.
    assert opts["quantized_nodes"] == 15 and opts["fp32_nodes"] == 5, opts
    assert opts["quantize_linear_nodes"] > 0 and opts["dequantize_linear_nodes"] >= opts["quantize_linear_nodes"]

    info = inspect_onnx(out / "model.onnx")
    assert info["int8_mode"] == "static", info
    assert info["weight_precision"] == "int8"
    assert info["ops"]["QuantizeLinear"] == opts["quantize_linear_nodes"]
    assert info["ops"]["DequantizeLinear"] == opts["dequantize_linear_nodes"]

    lm = OrtLM(out)
    c = _logit_checks(reference["logits"], lm.logits(heldout))
    assert c["top1"] >= MIN_TOP1, c
    assert c["mean_abs"] <= MAX_MEAN_ABS, c
    assert c["clear_flips"] == 0, c
    greedy = lm.generate(reference["prompts"], 40, [tok.eos_token_id])
    same = sum(a == b for a, b in zip(greedy, reference["greedy"]))
    assert same >= 3, (greedy, reference["greedy"])


def test_quality_report_and_options(onnx_dir, calibration, heldout, tmp_path):
    """quantize(quality_ids=...) reports perplexity / agreement; non-default options reach the graph."""
    import onnx

    from edgeft.quantize import quantize
    from edgeft.validate.compat import inspect_onnx

    opts = {"activation_type": "quint8", "activation_symmetric": True, "per_channel": False,
            "weight_matmuls_only": False, "nodes_to_exclude": ["/model/layers.0/mlp/down_proj/MatMul"]}
    rep = quantize(onnx_dir, tmp_path / "q", "int8-static", opts, calibration_ids=calibration,
                   quality_ids=[heldout[:64], heldout[64:]])
    assert abs(rep["perplexity_increase_pct"]) < 1.0 and rep["top1_agreement"] >= MIN_TOP1, rep
    o = rep["options"]
    assert o["activation_type"] == "quint8" and o["per_channel"] is False
    # attention MatMuls now quantized; the RoPE one and the excluded projection are not.
    assert o["quantized_nodes"] == 18 and o["fp32_nodes"] == 2, o
    assert list(o["auto_excluded"].values()) == ["rotary embedding (position-dependent range)"]
    assert inspect_onnx(tmp_path / "q" / "model.onnx")["int8_mode"] == "static"
    g = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    inits = {i.name: i for i in g.initializer}
    q_inputs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert q_inputs
    zp_types = {inits[n.input[2]].data_type for n in q_inputs if len(n.input) > 2 and n.input[2] in inits}
    assert zp_types == {onnx.TensorProto.UINT8}, zp_types
    dq_weights = [inits[n.input[1]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert dq_weights and all(len(s.dims) == 0 for s in dq_weights), "per_channel=False: one scale per weight"


def test_without_calibration_raises(onnx_dir, tmp_path):
    from edgeft.quantize import quantize

    with pytest.raises(ConfigError, match="calibration"):
        quantize(onnx_dir, tmp_path / "q", "int8-static")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("bad", [{"calibrate_method": "kl"}, {"activation_type": "int4"}, {"percentile": 20}])
def test_bad_option_values(bad, onnx_dir, calibration, tmp_path):
    from edgeft.quantize import quantize

    with pytest.raises(ConfigError, match=next(iter(bad))):
        quantize(onnx_dir, tmp_path / "q", "int8-static", bad, calibration_ids=calibration)


def test_full_integer_unsupported_for_decoder(onnx_dir, calibration, tmp_path):
    from edgeft.quantize import quantize

    with pytest.raises(UnsupportedError, match="not supported for decoder graphs") as e:
        quantize(onnx_dir, tmp_path / "q", "int8-static", {"full_integer": True}, calibration_ids=calibration)
    assert "past_key_values.0.key" in str(e.value) and "logits" in str(e.value)
    assert not (tmp_path / "q" / "model.onnx").exists()


def test_calibration_reader_feeds_prefill_with_empty_past(onnx_dir, calibration):
    from edgeft.quantize.schemes.static_int8 import WindowReader
    from edgeft.runtime.lm import find_onnx

    reader = WindowReader(find_onnx(onnx_dir), calibration)
    feeds = [reader.get_next() for _ in range(N_CALIB)]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["input_ids"].tolist() == [calibration[0]]
    f = feeds[1]
    assert f["input_ids"].shape == (1, SEQ) and f["attention_mask"].tolist() == [[1] * SEQ]
    assert f["position_ids"].tolist() == [list(range(SEQ))]
    past = sorted(k for k in f if k.startswith("past_key_values"))
    assert len(past) == 4  # 2 layers x key/value
    assert all(f[k].shape == (1, 2, 0, 16) and f[k].dtype == np.float32 for k in past)  # 2 kv heads, head_dim 64/4
