"""Compatibility: inspect small ONNX graphs built in code and check them against shipped profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeft.config import load_device  # noqa: E402
from edgeft.validate.compat import MB, RUNTIME_OVERHEAD_MB, check, estimate_ram_mb, inspect_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K = N = 64  # 64 x 64 = 4096 weights: a "large" weight


@pytest.fixture(autouse=True)
def _shipped_profiles(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)


# --------------------------------------------------------------------------- graphs


def _save(tmp_path: Path, graph, name: str, opsets=(("", 17),), **save) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path), **save)
    return path


def _weight(name="W", dtype=np.float32):
    return numpy_helper.from_array(np.arange(K * N).reshape(K, N).astype(dtype) % 7, name)


def mlp_with_erf(tmp_path, n_erf=1, batch="1"):
    """x[batch, 64] -> MatMul -> Erf (n_erf times) -> y: fp32, one op outside most allow-lists."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h0"], name="proj/MatMul")]
    for i in range(n_erf):
        nodes.append(helper.make_node("Erf", [f"h{i}"], [f"h{i + 1}"], name=f"act{i}/Erf"))
    nodes.append(helper.make_node("Identity", [f"h{n_erf}"], ["y"], name="out"))
    dim = int(batch) if batch.isdigit() else batch
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, N])],
        initializer=[_weight()],
    )
    return _save(tmp_path, graph, f"mlp{n_erf}{batch}")


def embedding_dynamic(tmp_path):
    """input_ids[batch, sequence] -> Gather(embedding) -> hidden: the usual LM front end."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "input_ids"], ["hidden"], name="/model/embed_tokens/Gather")],
        "embed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", N])],
        initializer=[_weight("E")],
    )
    return _save(tmp_path, graph, "embed")


def matmulnbits(tmp_path, bits=4):
    """ORT's weight-only block-quantized MatMul (com.microsoft), K=N=64, block 32."""
    block = 32
    blob = block * bits // 8
    packed = numpy_helper.from_array(np.zeros((N, K // block, blob), np.uint8), "W_q")
    scales = numpy_helper.from_array(np.ones((N * K // block,), np.float32), "W_scales")
    node = helper.make_node(
        "MatMulNBits", ["x", "W_q", "W_scales"], ["y"], name="/model/layers.0/mlp/MatMul_Q4",
        domain="com.microsoft", K=K, N=N, bits=bits, block_size=block,
    )
    graph = helper.make_graph(
        [node], "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
        initializer=[packed, scales],
    )
    return _save(tmp_path, graph, f"nbits{bits}", opsets=(("", 17), ("com.microsoft", 1)))


def dynamic_int8(tmp_path):
    """ORT dynamic int8 as quantize_dynamic writes it: DynamicQuantizeLinear + MatMulInteger."""
    w = numpy_helper.from_array((np.arange(K * N).reshape(K, N) % 5 - 2).astype(np.int8), "W_quantized")
    w_zp = numpy_helper.from_array(np.array(0, np.int8), "W_zero_point")
    w_scale = numpy_helper.from_array(np.array(0.01, np.float32), "W_scale")
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zp"], name="x_QuantizeLinear"),
        helper.make_node("MatMulInteger", ["x_q", "W_quantized", "x_zp", "W_zero_point"], ["acc"],
                         name="proj/MatMul_quant"),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT, name="proj/Cast"),
        helper.make_node("Mul", ["x_scale", "W_scale"], ["scale"], name="proj/scale_Mul"),
        helper.make_node("Mul", ["acc_f", "scale"], ["y"], name="proj/output_Mul"),
    ]
    graph = helper.make_graph(
        nodes, "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
        initializer=[w, w_zp, w_scale],
    )
    return _save(tmp_path, graph, "dyn")


def qlinear(tmp_path, io_type=TensorProto.UINT8):
    """Static int8: QLinearMatMul; with uint8 graph inputs/outputs it is full-integer."""
    inits = [
        numpy_helper.from_array(np.full((K, N), 3, np.uint8), "W_q"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.01, np.float32), "W_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "W_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
    ]
    integer = io_type == TensorProto.UINT8
    matmul = helper.make_node(
        "QLinearMatMul", ["x" if integer else "x_q", "x_scale", "x_zp", "W_q", "W_scale", "W_zp", "y_scale", "y_zp"],
        ["y" if integer else "y_q"], name="proj/QLinearMatMul",
    )
    if integer:
        nodes = [matmul]
    else:  # float edges: quantize the input, dequantize the output
        nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_QuantizeLinear"),
                 matmul,
                 helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["y"], name="y_DequantizeLinear")]
    graph = helper.make_graph(
        nodes, "qlinear",
        [helper.make_tensor_value_info("x", io_type, [1, K])],
        [helper.make_tensor_value_info("y", io_type, [1, N])],
        initializer=inits,
    )
    return _save(tmp_path, graph, f"qlinear{io_type}")


def artifact(path: Path, name="a", **over) -> dict:
    info = inspect_onnx(path)
    art = {
        "name": name,
        "format": "onnx",
        "precision": info["weight_precision"],
        "int8_mode": info["int8_mode"],
        "size_bytes": path.stat().st_size,
        "est_ram_mb": None,
        "onnx": info,
    }
    art.update(over)
    return art


def _names_device(result: dict, device: str) -> None:
    assert result["reasons"], result
    for reason in result["reasons"]:
        assert device in reason, reason


# --------------------------------------------------------------------------- inspect_onnx


def test_inspect_fp32_mlp(tmp_path):
    info = inspect_onnx(mlp_with_erf(tmp_path))
    assert info["opset"] == 17
    assert info["ops"] == {"MatMul": 1, "Erf": 1, "Identity": 1}
    assert info["op_nodes"]["Erf"] == ["act0/Erf"]
    assert info["inputs"] == [{"name": "x", "shape": [1, K]}]
    assert info["dynamic_inputs"] == []
    assert info["precisions"] == ["fp32"]
    assert info["int8_mode"] is None
    assert info["weight_precision"] == "fp32"


def test_inspect_keeps_first_five_node_names(tmp_path):
    info = inspect_onnx(mlp_with_erf(tmp_path, n_erf=7))
    assert info["ops"]["Erf"] == 7
    assert info["op_nodes"]["Erf"] == [f"act{i}/Erf" for i in range(5)]


def test_inspect_dynamic_dims(tmp_path):
    info = inspect_onnx(embedding_dynamic(tmp_path))
    assert info["inputs"] == [{"name": "input_ids", "shape": ["batch", "sequence"]}]
    assert info["dynamic_inputs"] == ["input_ids"]


@pytest.mark.parametrize("bits,precision,mode", [(4, "int4", None), (8, "int8", "weight-only")])
def test_inspect_matmulnbits(tmp_path, bits, precision, mode):
    info = inspect_onnx(matmulnbits(tmp_path, bits))
    assert info["ops"] == {"MatMulNBits": 1}
    # the packed uint8 weights count by `bits`, not by their container dtype
    assert info["precisions"] == sorted({"fp32", precision})
    assert info["weight_precision"] == precision
    assert info["int8_mode"] == mode


def test_inspect_dynamic_int8(tmp_path):
    info = inspect_onnx(dynamic_int8(tmp_path))
    assert info["precisions"] == ["fp32", "int8"]
    assert info["weight_precision"] == "int8"
    assert info["int8_mode"] == "dynamic"


def test_inspect_static_and_full_integer(tmp_path):
    full = inspect_onnx(qlinear(tmp_path, TensorProto.UINT8))
    assert full["int8_mode"] == "full-integer" and full["weight_precision"] == "int8"
    static = inspect_onnx(qlinear(tmp_path, TensorProto.FLOAT))
    assert static["int8_mode"] == "static" and static["weight_precision"] == "int8"


def test_inspect_real_quantize_dynamic_output(tmp_path):
    """What onnxruntime's own quantize_dynamic writes is recognised as dynamic int8."""
    quant = pytest.importorskip("onnxruntime.quantization")
    src = mlp_with_erf(tmp_path)
    out = tmp_path / "q.onnx"
    quant.quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], weight_type=quant.QuantType.QInt8)
    info = inspect_onnx(out)
    assert info["int8_mode"] == "dynamic"
    assert info["weight_precision"] == "int8"


def test_inspect_does_not_read_external_data(tmp_path):
    path = _save(tmp_path, onnx.load(str(mlp_with_erf(tmp_path))).graph, "ext",
                 save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    (tmp_path / "ext.bin").unlink()  # weights gone: the graph summary must still work
    info = inspect_onnx(path)
    assert info["weight_precision"] == "fp32" and info["ops"]["MatMul"] == 1


def test_inspect_missing_file_is_actionable(tmp_path):
    from edgeft.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="no such ONNX file"):
        inspect_onnx(tmp_path / "nope.onnx")


# --------------------------------------------------------------------------- check

#: The ONNX rules of an Edge-TPU-like accelerator (full-integer int8, static shapes, an op list of the ONNX op
#: types an int8 QDQ/QLinear graph uses). The shipped edge-tpu profile takes .tflite only (see
#: test_tflite_compat.py), so these ONNX checks run on a copy of it that loads ONNX.
ONNX_TPU_OPS = [
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger",
    "ConvTranspose", "Add", "QLinearAdd", "Sub", "Mul", "QLinearMul", "Max", "Min", "Relu", "Clip", "PRelu",
    "Sigmoid", "QLinearSigmoid", "Tanh", "Softmax", "QLinearSoftmax", "AveragePool", "QLinearAveragePool",
    "GlobalAveragePool", "QLinearGlobalAveragePool", "MaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "Reshape", "Transpose", "Concat", "QLinearConcat", "Split", "Slice", "Squeeze", "Unsqueeze",
    "Pad", "Resize", "SpaceToDepth",
]


def onnx_tpu():
    return load_device("edge-tpu").model_copy(
        update={"name": "onnx-tpu", "formats": ["onnx"], "op_allowlist": ONNX_TPU_OPS, "tflite": None})


def test_onnx_on_the_shipped_edge_tpu_names_the_tflite_export(tmp_path):
    res = check(artifact(qlinear(tmp_path, TensorProto.UINT8), "int8-full"), load_device("edge-tpu"))
    assert res["reasons"] == ["format onnx is not supported on edge-tpu (formats: tflite)"]
    assert res["suggestions"] == ["export with litert-int8-edgetpu (full-integer int8 .tflite; litert-image-int8 for an image model) for edge-tpu"]


def test_int4_refused_on_onnx_tpu_with_suggestion(tmp_path):
    tpu = onnx_tpu()
    res = check(artifact(matmulnbits(tmp_path, 4), "int4"), tpu)
    assert res["compatible"] is False
    _names_device(res, "onnx-tpu")
    assert "int4 MatMulNBits is not supported on onnx-tpu (precisions: int8)" in res["reasons"]
    assert any("onnx-tpu" in s and "int8" in s for s in res["suggestions"])
    # MatMulNBits is also outside the TPU op list, named with its node
    assert any("MatMulNBits x1 (/model/layers.0/mlp/MatMul_Q4)" in r for r in res["reasons"])


def test_int4_runs_on_phone_cpu(tmp_path):
    res = check(artifact(matmulnbits(tmp_path, 4), "int4"), load_device("phone-cpu"))
    assert res == {"compatible": True, "reasons": [], "suggestions": [], "warnings": []}


def test_dynamic_int8_refused_on_onnx_tpu(tmp_path):
    res = check(artifact(dynamic_int8(tmp_path), "int8"), onnx_tpu())
    assert not res["compatible"]
    _names_device(res, "onnx-tpu")
    assert any(
        r.startswith(
            "int8 dynamic quantization (DynamicQuantizeLinear/MatMulInteger) is not supported on onnx-tpu: "
            "it runs only full-integer int8; use a static full-integer scheme"
        )
        for r in res["reasons"]
    ), res["reasons"]
    assert check(artifact(dynamic_int8(tmp_path), "int8"), load_device("phone-cpu"))["compatible"]


def test_weight_only_int8_needs_float_activations(tmp_path):
    art = artifact(matmulnbits(tmp_path, 8), "int8-weight")
    assert check(art, load_device("phone-cpu"))["compatible"]
    res = check(art, onnx_tpu())
    assert any(r.startswith("int8 weight-only quantization") and "onnx-tpu" in r for r in res["reasons"])


def test_static_qdq_with_float_edges_is_not_full_integer(tmp_path):
    res = check(artifact(qlinear(tmp_path, TensorProto.FLOAT), "int8-static"), onnx_tpu())
    assert not res["compatible"]
    assert any("int8 static quantization" in r and "full-integer" in r for r in res["reasons"])


def test_full_integer_fits_onnx_tpu_and_warns_when_weights_stream(tmp_path):
    tpu = onnx_tpu()
    art = artifact(qlinear(tmp_path, TensorProto.UINT8), "int8-full")
    assert check(art, tpu) == {"compatible": True, "reasons": [], "suggestions": [], "warnings": []}
    big = check({**art, "size_bytes": 20 * MB}, tpu)
    assert big["compatible"] is True and big["reasons"] == []
    assert len(big["warnings"]) == 1
    assert "weights stream from RAM: slower" in big["warnings"][0] and "onnx-tpu" in big["warnings"][0]


def test_op_outside_allowlist_names_op_and_nodes(tmp_path):
    device = load_device("phone-cpu").model_copy(update={"op_allowlist": ["MatMul", "Identity"]})
    res = check(artifact(mlp_with_erf(tmp_path, n_erf=5)), device)
    assert not res["compatible"]
    assert res["reasons"] == [
        "phone-cpu cannot run 1 op type(s) outside its op allow-list: "
        "Erf x5 (act0/Erf, act1/Erf, act2/Erf, +2 more)"
    ]
    assert res["suggestions"]


def test_onnx_tpu_lists_every_outside_op_in_one_line(tmp_path):
    res = check(artifact(mlp_with_erf(tmp_path)), onnx_tpu())
    op_lines = [r for r in res["reasons"] if "op allow-list" in r]
    assert len(op_lines) == 1
    assert "Erf x1 (act0/Erf)" in op_lines[0] and "MatMul x1 (proj/MatMul)" in op_lines[0]
    assert "Add" not in op_lines[0]
    # fp32 weights are refused too, with a way out
    assert "fp32 weights are not supported on onnx-tpu (precisions: int8)" in res["reasons"]


def test_dynamic_dims_named_when_static_shapes_required(tmp_path):
    art = artifact(embedding_dynamic(tmp_path))
    res = check(art, onnx_tpu())
    _names_device(res, "onnx-tpu")
    assert "onnx-tpu requires static input shapes; dynamic inputs: input_ids [batch, sequence]" in res["reasons"]
    assert any("make_dynamic_shape_fixed" in s and "batch" in s for s in res["suggestions"])
    # Gather (the embedding lookup) is not a TPU op
    assert any("Gather x1 (/model/embed_tokens/Gather)" in r for r in res["reasons"])
    # a CPU target takes dynamic shapes
    assert check(art, load_device("phone-cpu"))["compatible"]


def test_format_size_and_ram(tmp_path):
    tpu = onnx_tpu()
    res = check({"name": "gguf", "format": "gguf", "precision": "int8", "int8_mode": "full-integer",
                 "size_bytes": 10 * MB, "est_ram_mb": None, "onnx": None}, tpu)
    assert "format gguf is not supported on onnx-tpu (formats: onnx)" in res["reasons"]
    assert "export to onnx for onnx-tpu" in res["suggestions"]

    phone = load_device("phone-cpu")
    art = artifact(mlp_with_erf(tmp_path), size_bytes=5000 * MB, est_ram_mb=3000.0)
    res = check(art, onnx_tpu())
    assert any(r.startswith("artifact is 5000 MB; onnx-tpu loads at most 4096 MB") for r in res["reasons"])
    res = check(art, phone)
    assert res["reasons"] == ["estimated RAM 3000 MB exceeds phone-cpu's model budget of 2048 MB "
                              "(memory.model_budget_mb)"]
    assert check({**art, "est_ram_mb": 2048.0}, phone)["compatible"]  # at the budget: fits


def test_uninspected_onnx_warns_on_graph_sensitive_device():
    res = check({"name": "x", "format": "onnx", "precision": "int8", "int8_mode": "full-integer",
                 "size_bytes": MB, "est_ram_mb": None, "onnx": None}, onnx_tpu())
    assert res["compatible"] and any("not inspected" in w for w in res["warnings"])


# --------------------------------------------------------------------------- RAM


def test_estimate_ram_formula():
    cfg = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "hidden_size": 576, "vocab_size": 49152}
    size = 100 * MB
    ctx = 256
    kv = 2 * 30 * 3 * (576 // 9) * ctx * 4
    act = 576 * ctx * 4 * 8 + 49152 * 4 * 2
    expect = (size + kv + act) / MB + RUNTIME_OVERHEAD_MB
    assert estimate_ram_mb(size, cfg, ctx) == pytest.approx(expect)
    # batch scales cache and activations, not weights
    assert estimate_ram_mb(size, cfg, ctx, batch=2) == pytest.approx(expect + (kv + act) / MB)
    # explicit head_dim wins; no kv heads -> attention heads
    cfg2 = {"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "hidden_size": 32}
    assert estimate_ram_mb(0, cfg2, 10) == pytest.approx(
        (2 * 2 * 4 * 16 * 10 * 4 + 32 * 10 * 4 * 8) / MB + RUNTIME_OVERHEAD_MB)


def test_estimate_ram_without_config():
    assert estimate_ram_mb(50 * MB, None, 512) == pytest.approx(50 + RUNTIME_OVERHEAD_MB)


def test_opset_newer_than_the_device_runs_is_refused():
    import onnx
    from onnx import TensorProto, helper

    from edgeft.validate.compat import check, inspect_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    for opset, ok in ((20, True), (21, False)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.save(model, d / f"m{opset}.onnx")
        info = inspect_onnx(d / f"m{opset}.onnx")
        res = check({"name": "a", "format": "onnx", "precision": "fp32", "int8_mode": None, "size_bytes": 100,
                     "est_ram_mb": 1.0, "onnx": info}, load_device("phone-cpu"))
        assert res["compatible"] is ok, res
        if not ok:
            assert "opset 21" in res["reasons"][0] and "phone-cpu" in res["reasons"][0]
            assert any("opset <= 20" in s for s in res["suggestions"])
