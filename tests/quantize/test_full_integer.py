"""Full-integer int8 (``int8-full-integer`` / ``int8-static`` with ``full_integer``) on a tiny BERT classifier.

An encoder takes int64 ids and masks already; the float logits become int8 through a calibrated
QuantizeLinear whose scale and zero point go to the model metadata. On this model (random,
logits |x| < 0.08) the int8 logits are the float QDQ graph's logits rounded to the output grid
(at most half a step apart inside the calibrated range; at most a few of the 96 values saturate
outside it), and the label agrees with fp32 wherever fp32's
top-2 margin exceeds 8 output steps (the QDQ MatMuls themselves move logits by up to ~6 steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")

SEQ = 16
VOCAB = 200


def _export(out: Path, fixed: bool) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        num_labels=3, max_position_embeddings=64)).eval()
    ids = torch.randint(1, VOCAB, (1, SEQ))
    out.mkdir(parents=True, exist_ok=True)
    axes = None if fixed else {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(out / "model.onnx"),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return out / "model.onnx"


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-bert")
    return {"dynamic": _export(root / "dynamic", False), "static": _export(root / "static", True)}


def _calibration(n=32, seed=0):
    """Random token rows like the test inputs; a quarter shorter than SEQ (padded for the static graph)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, SEQ if i % 4 else int(rng.integers(6, SEQ))).tolist() for i in range(n)]


@pytest.mark.parametrize("shape", ["static", "dynamic"])
def test_full_integer_encoder(bert, tmp_path, shape):
    """int8 logits = the static-QDQ graph's float logits rounded onto the calibrated output grid."""
    import onnx
    import onnxruntime as ort

    from edgeft.quantize import SCHEMES
    from edgeft.validate.compat import inspect_onnx

    src, dst, qdq = bert[shape], tmp_path / "fi.onnx", tmp_path / "qdq.onnx"
    pre = {"preprocess": shape == "static"}  # symbolic shape inference cannot follow the dynamic torch export
    rep = SCHEMES.get("int8-full-integer").apply(src, dst, _calibration(), **pre)
    SCHEMES.get("int8-static").apply(src, qdq, _calibration(), **pre)
    assert SCHEMES.get("int8-full-integer").int8_mode == "full-integer"
    assert inspect_onnx(dst)["int8_mode"] == "full-integer" and inspect_onnx(qdq)["int8_mode"] == "static"
    m = onnx.load(str(dst))
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT8
    q = json.loads({p.key: p.value for p in m.metadata_props}["edgeft.output_quantization"])["logits"]
    assert q == {k: rep["quantized_outputs"]["logits"][k] for k in ("scale", "zero_point")}
    ref, flt, full = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, qdq, dst))
    rng = np.random.default_rng(1)
    steps, agree, clear, clipped = [], 0, 0, 0
    for _ in range(32):
        ids = rng.integers(1, VOCAB, (1, SEQ))
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        x = ref.run(None, feeds)[0][0]
        f = flt.run(None, feeds)[0][0]
        y = full.run(None, feeds)[0][0]
        assert y.dtype == np.int8
        deq = (y.astype(np.float32) - q["zero_point"]) * q["scale"]
        lo, hi = (-128 - q["zero_point"]) * q["scale"], (127 - q["zero_point"]) * q["scale"]
        inside = (f >= lo) & (f <= hi)
        steps.append(float(np.abs(deq - f)[inside].max(initial=0.0) / q["scale"]))
        assert np.all(np.isin(y[~inside], (-128, 127)))  # outside the calibrated range: saturated
        clipped += int((~inside).sum())
        top2 = np.sort(x)[-2:]
        if top2[1] - top2[0] > 8 * q["scale"]:
            clear += 1
            agree += int(deq.argmax() == x.argmax())
    # inside the range nothing but the output rounding on top of the QDQ graph (0.5 step + float slack);
    # the calibrated range (+10% margin) covers nearly all of these inputs' logits
    assert max(steps) <= 0.51, max(steps)
    assert clipped <= 3, clipped
    assert clear >= 8 and agree == clear, (agree, clear)


def test_full_integer_option_on_int8_static(bert, tmp_path):
    from edgeft.quantize import SCHEMES

    rep = SCHEMES.get("int8-static").apply(bert["dynamic"], tmp_path / "s.onnx", _calibration(), full_integer=True,
                                           preprocess=False)
    assert rep["full_integer"] and "logits" in rep["quantized_outputs"]


def test_decoder_full_integer_unsupported(tiny_lm_dir, tmp_path):
    from edgeft.exporters.onnx import export_onnx
    from edgeft.quantize import SCHEMES

    export_onnx(tiny_lm_dir, tmp_path / "lm", opset=18)
    with pytest.raises(UnsupportedError, match="KV cache"):
        SCHEMES.get("int8-full-integer").apply(tmp_path / "lm" / "model.onnx", tmp_path / "x.onnx", [[1, 2, 3, 4]])


def test_quantize_describes_a_graph_exported_elsewhere(bert, tmp_path):
    """A graph folder without config.json or artifact.json (exported by another tool): quantize still describes its
    output, the kind read from the graph (int64 ids in, [batch, labels] logits out: a classifier)."""
    from artifact_checks import check_artifact
    from edgeft.quantize import quantize

    rep = quantize(bert["static"].parent, tmp_path / "fi", "int8-full-integer", {"preprocess": True},
                   calibration_ids=_calibration())
    check_artifact(tmp_path / "fi", name="int8-full-integer", kind="classifier", format="onnx", precision="int8",
                   int8_mode="full-integer", stage="quantize", size_bytes=rep["size_bytes"])
