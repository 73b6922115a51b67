""".tflite compatibility: small graphs written in the test (flatbuffers + the tflite schema, or converted from
a tiny torch module with litert_torch + ai_edge_quantizer) checked against the shipped profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tflite = pytest.importorskip("tflite")
flatbuffers = pytest.importorskip("flatbuffers")

from edgeft.config import load_device  # noqa: E402
from edgeft.validate.compat import check  # noqa: E402
from edgeft.validate.tflite_compat import edge_tpu_plan, find_tflite, inspect_tflite  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INT8, INT32, FLOAT32 = tflite.TensorType.INT8, tflite.TensorType.INT32, tflite.TensorType.FLOAT32
OP = {name: code for code, name in tflite.BUILTIN_OPCODE2NAME.items()}


@pytest.fixture(autouse=True)
def _shipped_profiles(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)


# --------------------------------------------------------------------------- hand-written flatbuffers


def T(name, shape, dtype=INT8, data=None, sig=None, scale=0.05, zp=0):  # noqa: N802 - a tensor spec
    return {"name": name, "shape": shape, "dtype": dtype, "data": data, "sig": sig, "scale": scale, "zp": zp}


def W(name, shape, dtype=INT8):  # noqa: N802 - a constant (weight) tensor spec
    size = {INT8: 1, INT32: 4, FLOAT32: 4}[dtype]
    return T(name, shape, dtype, data=bytes(int(np.prod(shape)) * size))


def _ints(b, start, values):
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(int(v))
    return b.EndVector()


def _offsets(b, start, offsets):
    start(b, len(offsets))
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def write_tflite(path: Path, tensors: list[dict], ops: list[tuple], inputs: list[int], outputs: list[int],
                 deprecated_codes: bool = True) -> Path:
    """A one-subgraph .tflite: ``ops`` are (builtin name or "CUSTOM:code", [input idx], [output idx]);
    ``deprecated_codes=False`` writes only ``builtin_code`` in the operator codes, as ai-edge-quantizer does.

    Written with the flatbuffers builder and the tflite schema functions: only inspection reads these
    files, so the ops carry no builtin options."""
    b = flatbuffers.Builder(1024)
    buffers = [(tflite.BufferStart(b), tflite.BufferEnd(b))[1]]  # buffer 0: the empty sentinel
    tensor_offsets = []
    for t in tensors:
        buf_index = 0
        if t["data"] is not None:
            data = b.CreateByteVector(t["data"])
            tflite.BufferStart(b)
            tflite.BufferAddData(b, data)
            buffers.append(tflite.BufferEnd(b))
            buf_index = len(buffers) - 1
        name = b.CreateString(t["name"])
        shape = _ints(b, tflite.TensorStartShapeVector, [abs(d) for d in t["shape"]])
        sig = _ints(b, tflite.TensorStartShapeSignatureVector, t["sig"]) if t["sig"] else None
        quant = None
        if t["dtype"] == INT8 and t["scale"] is not None:
            tflite.QuantizationParametersStartScaleVector(b, 1)
            b.PrependFloat32(t["scale"])
            scale = b.EndVector()
            tflite.QuantizationParametersStartZeroPointVector(b, 1)
            b.PrependInt64(t["zp"])
            zp = b.EndVector()
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zp)
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        if sig is not None:
            tflite.TensorAddShapeSignature(b, sig)
        tflite.TensorAddType(b, t["dtype"])
        tflite.TensorAddBuffer(b, buf_index)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offsets.append(tflite.TensorEnd(b))
    kinds = list(dict.fromkeys(op for op, _, _ in ops))
    codes = []
    for kind in kinds:
        custom = b.CreateString(kind.split(":", 1)[1]) if kind.startswith("CUSTOM:") else None
        code = OP["CUSTOM"] if custom else OP[kind]
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        if deprecated_codes:
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddVersion(b, 1)
        if custom:
            tflite.OperatorCodeAddCustomCode(b, custom)
        codes.append(tflite.OperatorCodeEnd(b))
    op_offsets = []
    for kind, ins, outs in ops:
        vin = _ints(b, tflite.OperatorStartInputsVector, ins)
        vout = _ints(b, tflite.OperatorStartOutputsVector, outs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, kinds.index(kind))
        tflite.OperatorAddInputs(b, vin)
        tflite.OperatorAddOutputs(b, vout)
        op_offsets.append(tflite.OperatorEnd(b))
    vt = _offsets(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
    vi = _ints(b, tflite.SubGraphStartInputsVector, inputs)
    vo = _ints(b, tflite.SubGraphStartOutputsVector, outputs)
    vops = _offsets(b, tflite.SubGraphStartOperatorsVector, op_offsets)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, vt)
    tflite.SubGraphAddInputs(b, vi)
    tflite.SubGraphAddOutputs(b, vo)
    tflite.SubGraphAddOperators(b, vops)
    sub = tflite.SubGraphEnd(b)
    vcodes = _offsets(b, tflite.ModelStartOperatorCodesVector, codes)
    vsubs = _offsets(b, tflite.ModelStartSubgraphsVector, [sub])
    vbufs = _offsets(b, tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, vcodes)
    tflite.ModelAddSubgraphs(b, vsubs)
    tflite.ModelAddBuffers(b, vbufs)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return path


def mlp(tmp_path, name="mlp", mid=("RELU", INT8), x_sig=None, width=32, tail_out=None):
    """x[1,16] -> FULLY_CONNECTED 'h' -> <mid op> 'a' -> FULLY_CONNECTED 'logits'[1,4] (int8 unless told)."""
    mid_op, mid_dtype = mid
    tensors = [T("x", [1, 16], sig=x_sig), W("w1", [width, 16]), W("b1", [width], INT32), T("h", [1, width]),
               T("a", [1, width], mid_dtype), W("w2", [4, width]), W("b2", [4], INT32),
               T("logits", [1, 4], tail_out or INT8)]
    ops = [("FULLY_CONNECTED", [0, 1, 2], [3]), (mid_op, [3], [4]), ("FULLY_CONNECTED", [4, 5, 6], [7])]
    return write_tflite(tmp_path / f"{name}.tflite", tensors, ops, [0], [7])


def art(path) -> dict:
    info = inspect_tflite(path)
    return {"name": Path(path).stem, "format": "tflite", "tflite": info, "size_bytes": info["size_bytes"],
            "est_ram_mb": None}


# --------------------------------------------------------------------------- inspect


def test_inspect_reads_ops_tensors_macs_and_mode(tmp_path):
    info = inspect_tflite(mlp(tmp_path))
    assert [(o["op"], o["name"]) for o in info["ops"]] == [
        ("FULLY_CONNECTED", "h"), ("RELU", "a"), ("FULLY_CONNECTED", "logits")]
    assert [o["macs"] for o in info["ops"]] == [32 * 16, 0, 4 * 32]
    assert info["macs"] == 32 * 16 + 4 * 32
    assert info["constant_bytes"] == 32 * 16 + 32 * 4 + 4 * 32 + 4 * 4
    assert info["int8_mode"] == "full-integer" and info["io_int8"] and info["float_ops"] == []
    x = info["inputs"][0]
    assert x == {"name": "x", "dtype": "int8", "shape": [1, 16], "shape_signature": [1, 16], "int8": True,
                 "scale": pytest.approx(0.05), "zero_point": 0}
    assert info["tensors"][0]["non_unit_dims"] == 1 and info["weight_precision"] == "int8"
    assert info["peak_activation_bytes"] >= 32  # the [1, 32] int8 activations


def test_inspect_reads_builtin_code_without_the_deprecated_field(tmp_path):
    # tflite.OperatorCode.BuiltinCode() would read this QUANTIZE (114) as ADD (0)
    tensors = [T("x", [1, 8], FLOAT32), T("xq", [1, 8]), T("y", [1, 8])]
    ops = [("QUANTIZE", [0], [1]), ("RELU", [1], [2])]
    info = inspect_tflite(write_tflite(tmp_path / "q.tflite", tensors, ops, [0], [2], deprecated_codes=False))
    assert [o["op"] for o in info["ops"]] == ["QUANTIZE", "RELU"]
    assert info["float_ops"] == [] and info["int8_mode"] == "full-integer" and not info["io_int8"]


def test_inspect_rejects_a_file_that_is_not_tflite(tmp_path):
    from edgeft.errors import ModelSourceError

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(ModelSourceError, match="not a TFLite flatbuffer"):
        inspect_tflite(bad)
    with pytest.raises(ModelSourceError, match="no such .tflite file"):
        inspect_tflite(tmp_path / "nope.tflite")
    assert find_tflite(tmp_path) == str(bad)


# --------------------------------------------------------------------------- Edge TPU


def test_edge_tpu_passes_a_clean_full_integer_graph(tmp_path):
    res = check(art(mlp(tmp_path)), load_device("edge-tpu"))
    assert res["compatible"], res["reasons"]
    plan = res["tflite"]["edge_tpu"]
    assert plan["ops_mapped"] == plan["ops_total"] == 3 and plan["mac_fraction"] == 1.0 and plan["split"] is None
    assert plan["onchip_fit"] is True and res["warnings"] == []


def test_edge_tpu_four_non_unit_dims(tmp_path):
    tensors = [T("x", [2, 3, 4, 5]), T("y", [2, 3, 4, 5])]
    path = write_tflite(tmp_path / "4d.tflite", tensors, [("RELU", [0], [1])], [0], [1])
    res = check(art(path), load_device("edge-tpu"))
    assert not res["compatible"]
    assert "tensor 'x' (RELU 'y') has 4 non-unit dims [2,3,4,5]: only the 3 innermost dims may exceed 1: " \
           "reshape to <=3 non-unit dims" in res["reasons"]
    assert res["tflite"]["edge_tpu"]["ops_mapped"] == 0
    # a leading unit dim is fine: [1,3,4,5]
    ok = write_tflite(tmp_path / "ok.tflite", [T("x", [1, 3, 4, 5]), T("y", [1, 3, 4, 5])], [("RELU", [0], [1])],
                      [0], [1])
    assert check(art(ok), load_device("edge-tpu"))["compatible"]


def test_edge_tpu_per_op_limits_from_the_table(tmp_path):
    """FULLY_CONNECTED maps with a one-dimensional output only, SOFTMAX with a 1-D input (Coral's table)."""
    tensors = [T("x", [1, 8, 16]), W("w", [4, 16]), W("b", [4], INT32), T("h", [1, 8, 4]), T("p", [1, 8, 4])]
    ops = [("FULLY_CONNECTED", [0, 1, 2], [3]), ("SOFTMAX", [3], [4])]
    res = check(art(write_tflite(tmp_path / "seq.tflite", tensors, ops, [0], [4])), load_device("edge-tpu"))
    assert not res["compatible"]
    plan = res["tflite"]["edge_tpu"]
    assert plan["ops_mapped"] == 0 and plan["split"]["op"] == "FULLY_CONNECTED"
    assert "FULLY_CONNECTED 'h' output 'h' [1,8,4] has 2 non-unit dims; the op maps with at most 1 (FullyConnected: " \
           "output tensor is one-dimensional)" in " ".join(res["reasons"])
    assert any(p["op"] == "SOFTMAX" and "Softmax: 1-D input" in p["what"] for p in plan["problems"])
    # one row at a time is within both limits
    row = [T("x", [1, 16]), W("w", [4, 16]), W("b", [4], INT32), T("h", [1, 4]), T("p", [1, 4])]
    ok = write_tflite(tmp_path / "row.tflite", row, ops, [0], [4])
    assert check(art(ok), load_device("edge-tpu"))["compatible"]


def test_edge_tpu_float_op_in_an_int8_graph(tmp_path):
    # h (int8) -> DEQUANTIZE -> float LOGISTIC -> QUANTIZE -> FULLY_CONNECTED: the float op splits the graph
    tensors = [T("x", [1, 16]), W("w1", [32, 16]), W("b1", [32], INT32), T("h", [1, 32]),
               T("h_f", [1, 32], FLOAT32), T("gate", [1, 32], FLOAT32), T("gate_q", [1, 32]),
               W("w2", [4, 32]), W("b2", [4], INT32), T("logits", [1, 4])]
    ops = [("FULLY_CONNECTED", [0, 1, 2], [3]), ("DEQUANTIZE", [3], [4]), ("LOGISTIC", [4], [5]),
           ("QUANTIZE", [5], [6]), ("FULLY_CONNECTED", [6, 7, 8], [9])]
    info = inspect_tflite(write_tflite(tmp_path / "mixed.tflite", tensors, ops, [0], [9]))
    assert info["float_ops"] == ["gate"] and info["int8_mode"] == "mixed"
    res = check(art(info["path"]), load_device("edge-tpu"))
    plan = res["tflite"]["edge_tpu"]
    assert plan["ops_mapped"] == 1 and plan["split"]["op"] == "DEQUANTIZE" and plan["split"]["name"] == "h_f"
    assert plan["cpu_ops"] == ["h_f", "gate", "gate_q", "logits"]
    assert "LOGISTIC 'gate' has float32 input 'h_f', float32 output 'gate': quantize with litert-int8-edgetpu " \
           "(full-integer int8, calibrated, Edge TPU ops; litert-image-int8 for an image model)" in res["reasons"]
    assert 0 < plan["mac_fraction"] < 1
    # phone-npu and mcu refuse a partly float graph naming the float op
    npu = check(art(info["path"]), load_device("phone-npu"))
    assert any("partly float graph" in r and "gate" in r for r in npu["reasons"])


def test_edge_tpu_dynamic_dim(tmp_path):
    res = check(art(mlp(tmp_path, x_sig=[1, -1])), load_device("edge-tpu"))
    assert not res["compatible"]
    assert "input 'x' (FULLY_CONNECTED 'h') has dynamic dim -1 [1,-1]: export with static shapes" in res["reasons"]
    assert res["tflite"]["edge_tpu"]["split"]["index"] == 0


def test_edge_tpu_unsupported_op_mid_graph_splits_it(tmp_path):
    path = mlp(tmp_path, mid=("GELU", INT8))
    res = check(art(path), load_device("edge-tpu"))
    plan = res["tflite"]["edge_tpu"]
    assert not res["compatible"]
    assert plan["ops_mapped"] == 1 and plan["ops_total"] == 3
    assert plan["split"] == {"index": 1, "name": "a", "op": "GELU", "why": "not a supported operation"}
    assert plan["cpu_ops"] == ["a", "logits"]  # FULLY_CONNECTED after the split runs on the CPU too
    assert plan["mac_fraction"] == pytest.approx(512 / (512 + 128))
    assert res["reasons"][0].startswith("edge-tpu maps 1/3 ops (80% of MACs): the Edge TPU compiler stops at op 1 "
                                        "GELU 'a' (not a supported operation)")
    assert "GELU 'a' is not on the Edge TPU's supported operations" in res["reasons"][1]
    # a custom op splits the same way, and CPU targets run it
    custom = mlp(tmp_path, name="custom", mid=("CUSTOM:MyOp", INT8))
    assert edge_tpu_plan(inspect_tflite(custom), load_device("edge-tpu"))["split"]["op"] == "CUSTOM:MyOp"
    assert check(art(path), load_device("phone-cpu"))["compatible"]


def test_edge_tpu_int32_token_ids_are_not_8_bit(tmp_path):
    # ids[1,8] int32 -> EMBEDDING_LOOKUP(int8 table) -> h: the lookup itself is also off Coral's list
    tensors = [T("input_ids", [1, 8], INT32, scale=None), W("table", [100, 16]), T("h", [1, 8, 16])]
    path = write_tflite(tmp_path / "emb.tflite", tensors, [("EMBEDDING_LOOKUP", [0, 1], [2])], [0], [2])
    info = inspect_tflite(path)
    assert info["int8_mode"] == "full-integer"  # int32 ids and int8 tensors: no float op
    res = check(art(path), load_device("edge-tpu"))
    assert res["reasons"][1] == ("EMBEDDING_LOOKUP 'h' has int32 input 'input_ids': compute these integer tensors "
                                 "(token ids, indices) before the graph and feed it 8-bit tensors, e.g. look the "
                                 "embeddings up on the CPU")
    assert "EMBEDDING_LOOKUP 'h' is not on the Edge TPU's supported operations" in res["reasons"][2]


def test_edge_tpu_weights_over_onchip_memory_warn(tmp_path):
    res = check(art(mlp(tmp_path, width=600_000)), load_device("edge-tpu"))  # ~9.6 MB of int8 weights
    assert res["compatible"], res["reasons"]
    assert len(res["warnings"]) == 1 and "exceed edge-tpu's 8 MB of on-chip parameter memory" in res["warnings"][0]


def test_onnx_on_edge_tpu_is_refused_for_its_format():
    res = check({"name": "m", "format": "onnx", "precision": "int8", "int8_mode": "full-integer",
                 "size_bytes": 1 << 20, "est_ram_mb": None, "onnx": None}, load_device("edge-tpu"))
    assert res == {"compatible": False, "reasons": ["format onnx is not supported on edge-tpu (formats: tflite)"],
                   "suggestions": ["export with litert-int8-edgetpu (full-integer int8 .tflite; litert-image-int8 for an image model) for edge-tpu"],
                   "warnings": []}


# --------------------------------------------------------------------------- converted graphs


class _Tiny:
    @staticmethod
    def module(width=32):
        import torch

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = torch.nn.Linear(16, width)
                self.fc2 = torch.nn.Linear(width, 4)

            def forward(self, x):
                return self.fc2(torch.relu(self.fc1(x)))

        torch.manual_seed(0)
        return Tiny().eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """fp32, dynamic-range and full-integer .tflite of a tiny MLP (litert_torch + ai_edge_quantizer)."""
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    import torch
    from ai_edge_quantizer import quantizer, recipe

    out = tmp_path_factory.mktemp("tflite")
    fp32 = out / "fp32.tflite"
    litert_torch.convert(_Tiny.module(), (torch.randn(1, 16),)).export(str(fp32))
    dyn = quantizer.Quantizer(str(fp32))
    dyn.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    dyn.quantize().export_model(str(out / "dyn.tflite"), overwrite=True)
    full = quantizer.Quantizer(str(fp32))
    full.load_quantization_recipe(recipe.static_wi8_ai8())
    rng = np.random.default_rng(0)
    signature = next(iter(full.get_signature_keys())) if hasattr(full, "get_signature_keys") else "serving_default"
    inputs = inspect_tflite(fp32)["inputs"]
    calib = {signature: [{"args_0": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(16)]}
    assert inputs[0]["name"].endswith("args_0")
    full.quantize(full.calibrate(calib)).export_model(str(out / "int8.tflite"), overwrite=True)
    return {"fp32": fp32, "dyn": out / "dyn.tflite", "int8": out / "int8.tflite"}


def test_converted_modes(converted):
    assert inspect_tflite(converted["fp32"])["int8_mode"] == "fp32"
    assert inspect_tflite(converted["dyn"])["int8_mode"] == "dynamic-range"
    full = inspect_tflite(converted["int8"])
    assert full["int8_mode"] == "full-integer" and full["io_int8"]
    assert full["inputs"][0]["scale"] > 0 and isinstance(full["inputs"][0]["zero_point"], int)


def test_phone_npu_takes_full_integer_and_refuses_dynamic_range(converted):
    npu = load_device("phone-npu")
    assert check(art(converted["int8"]), npu)["compatible"]
    res = check(art(converted["dyn"]), npu)
    assert not res["compatible"]
    assert res["reasons"][0].startswith("dynamic-range int8 (int8 weights, float activations) is not supported on "
                                        "phone-npu: it runs full-integer int8 tflite only")
    assert any("litert-int8-full" in s for s in res["suggestions"])
    for path in converted.values():  # phone-cpu (LiteRT XNNPACK) runs every mode
        assert check(art(path), load_device("phone-cpu"))["compatible"]


def test_edge_tpu_maps_the_converted_full_integer_graph(converted):
    res = check(art(converted["int8"]), load_device("edge-tpu"))
    assert res["compatible"], res["reasons"]
    assert res["tflite"]["edge_tpu"]["mac_fraction"] == 1.0
    assert not check(art(converted["dyn"]), load_device("edge-tpu"))["compatible"]


def test_mcu_runs_a_tiny_full_integer_graph_in_tflite_micro(converted):
    pytest.importorskip("tflite_micro")
    res = check(art(converted["int8"]), load_device("mcu"))
    assert res["compatible"], res["reasons"]
    run = res["tflite"]["tflite_micro"]
    assert run["ran"] is True and run["arena_bytes"] == int(0.5 * 2**20)
    assert 0 < run["arena_used_bytes"] < run["arena_bytes"]
    assert not check(art(converted["dyn"]), load_device("mcu"))["compatible"]


def test_mcu_rejects_a_model_over_its_flash(tmp_path):
    res = check(art(mlp(tmp_path, width=160_000)), load_device("mcu"))  # ~2.6 MB of int8 weights
    assert not res["compatible"]
    assert any("flash holds at most 2 MB (max_model_mb)" in r for r in res["reasons"])
    assert res["tflite"]["tflite_micro"] is None  # not run: it cannot be flashed


def test_mcu_reports_a_graph_tflite_micro_cannot_run(tmp_path):
    pytest.importorskip("tflite_micro")
    # a custom op TFLite Micro has no kernel for: the interpreter refuses it (reported, not crashed)
    res = check(art(mlp(tmp_path, name="custom", mid=("CUSTOM:MyOp", INT8))), load_device("mcu"))
    assert not res["compatible"]
    assert any(r.startswith("TFLite Micro could not run the model in a 0.5 MB arena") for r in res["reasons"])


def test_mcu_rejects_activations_over_its_arena(tmp_path):
    tensors = [T("x", [1, 400_000]), T("y", [1, 400_000])]  # 0.8 MB live at once, arena 0.5 MB
    path = write_tflite(tmp_path / "wide.tflite", tensors, [("RELU", [0], [1])], [0], [1])
    res = check(art(path), load_device("mcu"))
    assert any(r.startswith("live activations peak at 0.76 MB; mcu's tensor arena is 0.5 MB (budgets.ram_mb)")
               for r in res["reasons"]), res["reasons"]
    assert res["tflite"]["tflite_micro"] is None


def test_pte_runs_on_phone_cpu_not_on_accelerators():
    pte = {"name": "pte", "format": "pte", "precision": "int8", "int8_mode": "dynamic", "size_bytes": 1 << 20,
           "est_ram_mb": None, "onnx": None}
    assert check(pte, load_device("phone-cpu"))["compatible"]
    for name in ("edge-tpu", "mcu", "phone-npu"):
        res = check(pte, load_device(name))
        assert res["reasons"] == [f"format pte is not supported on {name} "
                                  f"(formats: {', '.join(load_device(name).formats)})"]


def test_validate_records_the_tflite_summary(tmp_path):
    from edgeft.validate import Artifact
    from edgeft.validate.common import add_graph_info, size_bytes

    folder = tmp_path / "litert-int8"
    folder.mkdir()
    path = mlp(folder)
    a = Artifact("litert-int8", folder, "tflite", precision="int8", int8_mode="full-integer")
    info: dict = {}
    add_graph_info(info, a)
    assert info["tflite"]["path"] == str(path) and info["tflite"]["int8_mode"] == "full-integer"
    assert size_bytes(a) == path.stat().st_size


def test_reasons_name_nodes_readably():
    from edgeft.validate.tflite_compat import readable_name

    long = ("edgeft.exporters.litert._edge_bert_class.<locals>.EdgeBert;;edgeft.exporters.litert._edge_bert_class."
            "<locals>.EdgeBert/torch.nn.modules.linear.Linear_query;2")
    assert readable_name(long) == "EdgeBert/Linear_query;2"
    assert [readable_name(n) for n in ("x", "serving_default_x:0", "model/dense_1/MatMul")] == [
        "x", "serving_default_x:0", "model/dense_1/MatMul"]
