"""Projected latency: roofline arithmetic checked by hand against the shipped device profiles.

Expected values are written out from the formulas in the module docstrings with SmolLM2-135M's
config, never taken from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeft.config import load_device
from edgeft.validate.projection import (
    calibrate_overhead,
    flops_per_token_at,
    kv_bytes_per_token_at,
    mean_decode_context,
    model_costs,
    model_params,
    project_decode,
    project_prefill,
    projection_error,
)

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

SMOL = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "tie_word_embeddings": True,
}
# By hand: per layer q 576*576 + k,v 2*576*(3*64) + o 576*576 + gated MLP 3*576*1536.
PER_LAYER = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536  # 3,538,944
NON_EMB = 30 * PER_LAYER  # 106,168,320
EMB = 49152 * 576  # 28,311,552
FLOPS = 2 * NON_EMB + 2 * EMB  # 268,959,744
ATTN_PER_CTX = 4 * 30 * 576  # 69,120 (heads*head_dim = 9*64 = 576)
KV_PER_CTX = 2 * 30 * 3 * 64 * 4  # 46,080 bytes (fp32 K and V)

# Sizes of the quickstart artifacts (export fp32, int8 / int4 MatMulNBits with block 32).
SIZE_FP32 = 539_285_833
SIZE_INT8 = 234_088_171
SIZE_INT4 = 181_004_011


@pytest.fixture(autouse=True)
def _shipped_profiles(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)


def _with(device, bandwidth_gbps=None, fp32_gflops=None, int8_gops=None, **top):
    mem = device.memory.model_copy(update={"bandwidth_gbps": bandwidth_gbps or device.memory.bandwidth_gbps})
    comp = device.compute.model_copy(update={"fp32_gflops": fp32_gflops or device.compute.fp32_gflops,
                                             "int8_gops": int8_gops or device.compute.int8_gops})
    return device.model_copy(update={"memory": mem, "compute": comp, **top})


@pytest.fixture
def host():
    """The host profile with pinned numbers (10 GB/s, 69 GFLOP/s, 138 GOP/s) so the hand arithmetic
    below stays valid when devices/host.yaml is re-measured."""
    return _with(load_device("host"), bandwidth_gbps=10.0, fp32_gflops=69.0, int8_gops=138.0)


# --------------------------------------------------------------------------- costs


def test_params_and_costs_of_smollm2_by_hand():
    p = model_params(SMOL)
    assert p["non_embedding"] == NON_EMB == 106_168_320
    assert p["embedding"] == EMB
    assert p["mlp_matrices"] == 3 and p["tied"]

    c = model_costs(None, SMOL, SIZE_FP32, "fp32")
    # tied fp32: minus the gathered table (EMB*4), plus the LM head reading that same table
    assert c["embedding_bytes"] == EMB * 4
    assert c["lm_head_bytes"] == EMB * 4
    assert c["weight_bytes"] == pytest.approx(SIZE_FP32)  # ~539 MB
    assert c["flops_per_token"] == FLOPS
    assert flops_per_token_at(c, 100) == FLOPS + ATTN_PER_CTX * 100
    assert kv_bytes_per_token_at(c, 100) == KV_PER_CTX * 100


def test_quantized_tied_head_is_read_fp32():
    c8 = model_costs({"ops": {"MatMulNBits": 210, "MatMul": 62, "Gather": 10}, "int8_mode": "weight-only"},
                     SMOL, SIZE_INT8, "int8")
    # the table stays fp32 (Gather) and the tied head reads it every token: vocab*hidden*4 counted
    assert c8["lm_head_bytes"] == EMB * 4
    assert c8["weight_bytes"] == pytest.approx(SIZE_INT8 - EMB * 4 + EMB * 4)
    assert any("tied LM head" in a for a in c8["assumptions"])


def test_block_quantized_table_shared_with_the_head():
    c = model_costs({"ops": {"GatherBlockQuantized": 1, "MatMulNBits": 211}}, SMOL, 80_000_000, "int4")
    assert c["embedding_bytes"] == EMB * 0.5
    assert c["weight_bytes"] == pytest.approx(80_000_000)


def test_untied_embedding_is_not_read():
    cfg = {**SMOL, "tie_word_embeddings": False}
    size = SIZE_FP32 + EMB * 4  # separate fp32 head
    c = model_costs(None, cfg, size, "fp32")
    assert c["lm_head_bytes"] == 0
    assert c["weight_bytes"] == pytest.approx(size - EMB * 4)
    # quantized untied: the fp32 table is subtracted, the int8 head stays in the size
    c8 = model_costs(None, cfg, 150_000_000, "int8")
    assert c8["weight_bytes"] == pytest.approx(150_000_000 - EMB * 4)


def test_gpt2_style_config_has_two_mlp_matrices():
    p = model_params({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100})
    assert p["mlp_matrices"] == 2 and p["intermediate_size"] == 256
    assert p["non_embedding"] == 2 * (4 * 64 * 64 + 2 * 64 * 256)


def test_without_config_everything_is_read():
    c = model_costs(None, None, 1_000_000, "int8")
    assert c["weight_bytes"] == 1_000_000
    assert c["flops_per_token"] == 2 * 1_000_000  # 1 byte per int8 param
    assert kv_bytes_per_token_at(c, 512) == 0


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        model_costs(None, SMOL, 1, "int2")


def test_precision_from_onnx_summary():
    c = model_costs({"weight_precision": "int4", "ops": {}}, SMOL, SIZE_INT4, None)
    assert c["precision"] == "int4"


# --------------------------------------------------------------------------- decode


def test_host_fp32_is_memory_bound_by_hand(host):
    ctx = 44
    c = model_costs(None, SMOL, SIZE_FP32, "fp32")
    r = project_decode(c, host, ctx)
    nbytes = SIZE_FP32 + KV_PER_CTX * ctx
    mem_ms = nbytes / 10.0e9 * 1e3  # host: 10 GB/s
    comp_ms = (FLOPS + ATTN_PER_CTX * ctx) / 69.0e9 * 1e3  # host: 69 GFLOP/s fp32
    assert mem_ms == pytest.approx(54.13, abs=0.01)  # ~538 MB of weights at 10 GB/s
    assert comp_ms == pytest.approx(3.94, abs=0.01)
    assert r["label"] == "projected"
    assert r["bound"] == "memory"
    assert r["bytes_per_token"] == pytest.approx(nbytes)
    assert r["flops_per_token"] == pytest.approx(FLOPS + ATTN_PER_CTX * ctx)
    assert r["per_token_ms"] == pytest.approx(mem_ms)
    assert r["decode_tok_s"] == pytest.approx(1e3 / mem_ms)
    assert r["assumptions"] and all(isinstance(a, str) for a in r["assumptions"])
    assert project_decode(c, host, ctx, overhead_ms=5.0)["per_token_ms"] == pytest.approx(mem_ms + 5.0)


def test_compute_bound_on_a_bandwidth_rich_device(host):
    dev = _with(host, bandwidth_gbps=1000.0, fp32_gflops=1.0, int8_gops=2.0)
    c = model_costs(None, SMOL, SIZE_FP32, "fp32")
    r = project_decode(c, dev, 0)
    assert r["bound"] == "compute"
    assert r["per_token_ms"] == pytest.approx(FLOPS / 1.0e9 * 1e3)  # 268.96 ms
    # int8 weights on a device that runs int8: the integer throughput
    c8 = model_costs({"ops": {}, "int8_mode": "weight-only"}, SMOL, SIZE_INT8, "int8")
    assert project_decode(c8, dev, 0)["per_token_ms"] == pytest.approx(FLOPS / 2.0e9 * 1e3)
    # ... but not where the device lacks that int8 mode (fp32 fallback)
    dev_static = dev.model_copy(update={"int8_modes": ["full-integer"]})
    assert project_decode(c8, dev_static, 0)["per_token_ms"] == pytest.approx(FLOPS / 1.0e9 * 1e3)


def test_int4_faster_than_int8_faster_than_fp32(host):
    ctx = 44
    c32 = model_costs(None, SMOL, SIZE_FP32, "fp32")
    c8 = model_costs({"ops": {"MatMulNBits": 210}, "int8_mode": "weight-only"}, SMOL, SIZE_INT8, "int8")
    c4 = model_costs({"ops": {"MatMulNBits": 210}, "int8_mode": None}, SMOL, SIZE_INT4, "int4")
    assert c4["weight_bytes"] < c8["weight_bytes"] < c32["weight_bytes"]
    t = [project_decode(c, host, ctx)["per_token_ms"] for c in (c4, c8, c32)]
    assert t[0] < t[1] < t[2]
    assert t[1] == pytest.approx((SIZE_INT8 + KV_PER_CTX * ctx) / 10.0e9 * 1e3)
    # from parameter counts alone (block scales ignored): int4 < int8 < fp32 bytes
    sizes = {p: NON_EMB * b + EMB * 4 for p, b in (("fp32", 4), ("int8", 1), ("int4", 0.5))}
    w = {p: model_costs(None, SMOL, int(s), p)["weight_bytes"] for p, s in sizes.items()}
    assert w["int4"] < w["int8"] < w["fp32"]


def test_streaming_when_onchip_memory_is_too_small():
    tpu = load_device("edge-tpu")  # 8 MiB on chip, 0.4 GB/s, 2000 GOP/s int8, full-integer only
    c = model_costs({"ops": {}, "int8_mode": "full-integer"}, SMOL, SIZE_INT8, "int8")
    ctx = 16
    r = project_decode(c, tpu, ctx)
    streamed = SIZE_INT8 - 8 * MiB  # the first 8 MiB stay on chip
    nbytes = streamed + KV_PER_CTX * ctx
    assert r["bound"] == "memory"
    assert r["bytes_per_token"] == pytest.approx(nbytes)
    assert r["per_token_ms"] == pytest.approx(nbytes / 0.4e9 * 1e3)  # ~565 ms
    assert any("on-chip" in a for a in r["assumptions"])


def test_weights_that_fit_on_chip_are_not_streamed():
    tpu = load_device("edge-tpu")
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 256, "tie_word_embeddings": True}
    # by hand: per layer 4*64*64 + 3*64*128 = 40,960; 2 layers = 81,920; table 256*64 = 16,384
    size = 81_920 + 16_384 * 4  # int8 matrices, fp32 table
    c = model_costs({"ops": {}, "int8_mode": "full-integer"}, tiny, size, "int8")
    r = project_decode(c, tpu, 10)
    kv = 2 * 2 * 4 * 16 * 4 * 10  # only the KV cache comes from RAM
    flops = 2 * 81_920 + 2 * 16_384 + 4 * 2 * 64 * 10
    assert r["bytes_per_token"] == pytest.approx(kv)
    assert r["per_token_ms"] == pytest.approx(max(kv / 0.4e9, flops / 2000e9) * 1e3)


# --------------------------------------------------------------------------- prefill


def test_prefill_by_hand(host):
    c = model_costs(None, SMOL, SIZE_FP32, "fp32")
    P = 28
    r = project_prefill(c, host, P, overhead_ms=2.0)
    flops = P * FLOPS + ATTN_PER_CTX * P * (P + 1) / 2
    expected = flops / 69.0e9 * 1e3 + SIZE_FP32 / 10.0e9 * 1e3 + 2.0
    assert r["prefill_flops"] == pytest.approx(flops)
    assert r["ttft_ms"] == pytest.approx(expected)  # ~109 ms compute + ~54 ms read + 2
    assert r["label"] == "projected"


# --------------------------------------------------------------------------- calibration


def test_calibration_round_trip(host):
    ctx = mean_decode_context(28, 32)
    assert ctx == 44
    c8 = model_costs({"ops": {}, "int8_mode": "weight-only"}, SMOL, SIZE_INT8, "int8")
    bare = (SIZE_INT8 + KV_PER_CTX * ctx) / 10.0e9 * 1e3  # 23.41 ms
    measured = 30.0
    ovh = calibrate_overhead(c8, host, measured, ctx)
    assert ovh == pytest.approx(measured - bare)
    assert project_decode(c8, host, ctx, ovh)["per_token_ms"] == pytest.approx(measured)
    # the same absolute overhead is added on another device, unscaled
    pi5 = load_device("pi5")
    assert (project_decode(c8, pi5, ctx, ovh)["per_token_ms"]
            == pytest.approx(project_decode(c8, pi5, ctx)["per_token_ms"] + ovh))


def test_calibration_clamps_at_zero(host):
    c = model_costs(None, SMOL, SIZE_FP32, "fp32")
    assert calibrate_overhead(c, host, 1.0, 44) == 0.0


def test_projection_error():
    proj = {"per_token_ms": 12.0, "ttft_ms": 90.0}
    meas = {"per_token_ms_p50": 10.0, "ttft_ms_p50": 100.0}
    e = projection_error(proj, meas)
    assert e["per_token_ms"]["error_ms"] == pytest.approx(2.0)
    assert e["per_token_ms"]["pct_error"] == pytest.approx(20.0)
    assert e["ttft_ms"]["error_ms"] == pytest.approx(-10.0)
    assert e["ttft_ms"]["abs_error_ms"] == pytest.approx(10.0)
    assert e["ttft_ms"]["pct_error"] == pytest.approx(-10.0)
    assert e["ttft_ms"]["abs_pct_error"] == pytest.approx(10.0)
    assert projection_error({"per_token_ms": 1.0}, {"ttft_ms": 5.0}) == {}
