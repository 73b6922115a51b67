""".tflite artifact x device compatibility: Edge TPU mapping, LiteRT NPU/CPU rules, TFLite Micro fit.

- :func:`inspect_tflite` parses the flatbuffer with the ``tflite`` schema reader and summarises what a
  device cares about: ops in execution order (named by their first output tensor), every tensor's
  dtype / shape / shape signature (-1 = dynamic), non-unit dims, graph inputs/outputs with their
  int8 scale and zero point, float compute ops, constant (weight) bytes, MACs per op, the peak of
  live activation bytes and the int8 mode.
- :func:`check_tflite` applies a device's rules to that summary (``device.tflite.runtime``):

  * ``edgetpu``: the Edge TPU compiler maps ops in order until the first one it cannot run (op
    not on ``device.tflite.op_allowlist``, a non-8-bit tensor, a dynamic dim, a tensor with a
    dim > 1 outside the ``innermost_dims`` innermost ones); that op and every op after it run on
    the host CPU. The artifact passes only when every op maps. Weights over
    ``onchip_param_mb`` are a warning (they stream from host memory).
  * ``tflite-micro``: full-integer only, the file within ``max_model_mb`` of flash, the
    estimated arena within ``budgets.ram_mb``; when it fits, the graph is run once in the TFLite
    Micro interpreter (in a child process: a too-small arena crashes the interpreter) and the arena
    it used is reported.
  * ``litert``: the int8 mode against ``device.int8_modes`` and static shapes when required.

``tflite`` and ``tflite_micro`` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from typing import Optional, Union

from edgeft.config.schema import DeviceProfile
from edgeft.errors import ModelSourceError

log = logging.getLogger(__name__)

__all__ = ["check_tflite", "edge_tpu_plan", "find_tflite", "inspect_tflite", "run_tflite_micro"]

MB = 1024 * 1024

#: Constants with at least this many elements count as weights for ``weight_precision``.
LARGE_WEIGHT_ELEMENTS = 1024
#: Failing ops listed one reason each; the rest are counted.
_OPS_SHOWN = 6
#: Names kept in the report: ops left on the CPU, per-op problems.
_CPU_OPS_KEPT = 50
_PROBLEMS_KEPT = 50
#: Seconds the TFLite Micro child process may take.
TFLM_TIMEOUT_S = 120

# Ops that only change the number representation at the graph edges (not "compute").
_CONVERT_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Ops whose constant second input is a weight matrix (dynamic-range quantization quantizes these).
_WEIGHT_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D",
               "EMBEDDING_LOOKUP", "GATHER", "UNIDIRECTIONAL_SEQUENCE_LSTM"}
_INT8 = {"int8", "uint8"}
_FIX_FULL_INT = "quantize with litert-int8-full (full-integer int8, calibrated; litert-image-int8 for an image model)"
_FIX_EDGE_TPU_INT = ("quantize with litert-int8-edgetpu (full-integer int8, calibrated, Edge TPU ops; "
                     "litert-image-int8 for an image model)")
_FIX_NOT_8BIT = ("compute these integer tensors (token ids, indices) before the graph and feed it 8-bit "
                 "tensors, e.g. look the embeddings up on the CPU")


# --------------------------------------------------------------------------- inspect


def find_tflite(path: Union[str, os.PathLike]) -> str:
    """The ``.tflite`` file of an artifact: ``path`` itself, or the single ``*.tflite`` in the folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    found = sorted(f for f in os.listdir(path) if f.endswith(".tflite")) if os.path.isdir(path) else []
    if len(found) != 1:
        what = "no .tflite file" if not found else f"{len(found)} .tflite files ({', '.join(found)})"
        raise ModelSourceError(f"{path}: {what}; a tflite artifact is one .tflite file (or a folder holding one)")
    return os.path.join(path, found[0])


def _dtype_names() -> dict[int, str]:
    import tflite

    return {v: k.lower() for k, v in vars(tflite.TensorType).items() if not k.startswith("_") and isinstance(v, int)}


_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4, "uint32": 4, "int64": 8,
             "uint64": 8, "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1, "int4": 0.5,
             "complex64": 8, "complex128": 16}


def _vec(length: int, as_numpy) -> list:
    # the generated *AsNumpy() accessors return 0 (not an empty array) for an absent vector
    return as_numpy().tolist() if length else []


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 1)
    return n


def readable_name(name: str) -> str:
    """A converter's tensor name as a reader wants it in a reason: the most specific scope, each part without its
    Python module path (``pkg.mod._f.<locals>.EdgeBert/torch.nn.modules.linear.Linear_query;2`` ->
    ``EdgeBert/Linear_query;2``); short names (``x``, ``serving_default_x:0``) stay as they are."""
    parts = [p for p in name.split(";") if p and not p.isdigit()]
    if not parts or (len(parts) == 1 and "." not in parts[0] and "/" not in parts[0]):
        return name
    scope = max(parts, key=lambda p: p.count("/"))
    comps = [c.rsplit(".", 1)[-1] if ("<locals>" in c or c.count(".") >= 2) else c for c in scope.split("/")]
    tail = name.rsplit(";", 1)[-1]
    return "/".join(comps) + (f";{tail}" if ";" in name and tail.isdigit() else "")


def _tensor(model, t, dtypes) -> dict:
    shape = _vec(t.ShapeLength(), t.ShapeAsNumpy)
    sig = _vec(t.ShapeSignatureLength(), t.ShapeSignatureAsNumpy) or list(shape)
    buf = model.Buffers(t.Buffer()) if t.Buffer() > 0 else None
    nbytes = 0
    if buf is not None:
        nbytes = buf.DataLength() or (int(buf.Size()) if buf.Offset() > 1 else 0)  # data outside the flatbuffer
    dtype = dtypes.get(t.Type(), f"type{t.Type()}")
    q = t.Quantization()
    scale = _vec(q.ScaleLength(), q.ScaleAsNumpy) if q is not None else []
    zero = _vec(q.ZeroPointLength(), q.ZeroPointAsNumpy) if q is not None else []
    full = t.Name().decode(errors="replace")
    return {"name": readable_name(full), "full_name": full, "dtype": dtype, "shape": shape, "shape_signature": sig,
            "non_unit_dims": sum(1 for d in sig if d != 1), "constant": nbytes > 0 and not t.IsVariable(),
            "bytes": nbytes if nbytes else int(_numel(shape) * _ITEMSIZE.get(dtype, 4)),
            # per-tensor quantization: the scale and zero point; per-channel (weights): only the channel count
            "scale": scale[0] if len(scale) == 1 else None, "zero_point": zero[0] if len(zero) == 1 else None,
            "quant_channels": len(scale)}


def _op_name(model, op) -> str:
    import tflite

    oc = model.OperatorCodes(op.OpcodeIndex())
    code = max(_raw_builtin_code(oc), oc.DeprecatedBuiltinCode())  # as LiteRT's schema_utils GetBuiltinCode
    name = tflite.BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}")
    if name == "CUSTOM":
        custom = oc.CustomCode()
        name = f"CUSTOM:{custom.decode(errors='replace') if custom else '?'}"
    return name


def _raw_builtin_code(oc) -> int:
    """The ``builtin_code`` field (vtable slot 3) as stored.

    ``tflite.OperatorCode.BuiltinCode()`` returns ``deprecated_builtin_code`` for any code < 127,
    which is 0 (ADD) when a writer sets only ``builtin_code`` (ai-edge-quantizer does, for the
    QUANTIZE ops it adds), so the field is read here directly."""
    import flatbuffers

    o = oc._tab.Offset(10)
    return int(oc._tab.Get(flatbuffers.number_types.Int32Flags, o + oc._tab.Pos)) if o else 0


def _batch_matmul_adj_x(op) -> bool:
    import tflite

    table = op.BuiltinOptions()
    if table is None:
        return False
    opts = tflite.BatchMatMulOptions()
    opts.Init(table.Bytes, table.Pos)
    return bool(opts.AdjX())


def _macs(kind: str, op, ins: list[dict], outs: list[dict]) -> int:
    """Multiply-accumulates of one op, from its static shapes (0 for ops that are not matrix/conv work)."""
    if not outs:
        return 0
    out = outs[0]["shape"]
    try:
        if kind == "CONV_2D":  # filter [Co, Kh, Kw, Ci]
            _, kh, kw, ci = ins[1]["shape"]
            return _numel(out) * kh * kw * ci
        if kind == "DEPTHWISE_CONV_2D":  # filter [1, Kh, Kw, Co]
            return _numel(out) * ins[1]["shape"][1] * ins[1]["shape"][2]
        if kind == "FULLY_CONNECTED":  # weights [units, in]
            return _numel(out) * ins[1]["shape"][-1]
        if kind == "BATCH_MATMUL":  # a [..., M, K] (adj_x: [..., K, M])
            a = ins[0]["shape"]
            return _numel(out) * (a[-2] if _batch_matmul_adj_x(op) else a[-1])
        if kind == "TRANSPOSE_CONV":  # inputs: output_shape, filter [Co, Kh, Kw, Ci], input
            _, kh, kw, _ = ins[1]["shape"]
            return _numel(ins[2]["shape"]) * kh * kw * ins[1]["shape"][0]
    except (IndexError, ValueError, TypeError):
        return 0
    return 0


def _int8_mode(ops: list[dict], tensors: list[dict]) -> str:
    weight_int8 = any(
        o["op"] in _WEIGHT_OPS and len(o["inputs"]) > 1 and tensors[o["inputs"][1]]["constant"]
        and tensors[o["inputs"][1]]["dtype"] in _INT8 and o["float"] for o in ops
    )
    if weight_int8:
        return "dynamic-range"  # int8 weights, float activations quantized per op at run time
    if not any(o["float"] for o in ops) and any(t["dtype"] in _INT8 | {"int16"} for t in tensors):
        return "full-integer"
    quantized = _INT8 | {"int16"}
    if any(o["float"] for o in ops) and any(
            not o["float"] and o["op"] not in _CONVERT_OPS
            and any(tensors[i]["dtype"] in quantized for i in o["inputs"] + o["outputs"]) for o in ops):
        return "mixed"  # some compute ops on quantized tensors, others float
    if any(t["constant"] and t["dtype"] == "float16" for t in tensors):
        return "fp16"
    return "fp32"


def _precision(dtype: str) -> Optional[str]:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "fp16", "int8": "int8", "uint8": "int8",
            "int4": "int4"}.get(dtype)


def _peak_live_bytes(ops: list[dict], tensors: list[dict], graph_inputs: list[int]) -> int:
    """Peak sum of live activation tensors over the execution order (a lower bound of the arena).

    A tensor is live from the op that produces it (graph inputs: from the start) to its last reader;
    one sweep over +bytes/-bytes events, so a graph of thousands of ops stays fast."""
    first: dict[int, int] = {i: 0 for i in graph_inputs}
    last: dict[int, int] = {}
    for k, o in enumerate(ops):
        for i in o["outputs"] + [i for i in o["inputs"] if not tensors[i]["constant"]]:
            first.setdefault(i, k)
            last[i] = k
    delta = [0] * (len(ops) + 1)
    for i, f in first.items():
        delta[f] += tensors[i]["bytes"]
        delta[last.get(i, len(ops) - 1) + 1] -= tensors[i]["bytes"]
    peak = live = 0
    for d in delta[:-1]:
        live += d
        peak = max(peak, live)
    return int(peak)


def inspect_tflite(path: Union[str, os.PathLike]) -> dict:
    """Summarise a ``.tflite`` flatbuffer (main subgraph) for compatibility checks.

    Returns a dict: ``path``, ``size_bytes``, ``subgraphs``; ``ops`` in execution order, each
    ``{"index", "op", "name", "inputs", "outputs", "float", "macs"}`` (``op``: builtin name or
    ``CUSTOM:<code>``; ``name``: the first output tensor's name; ``inputs``/``outputs``: tensor
    indices; ``float``: a compute op with any float32 input or output); ``op_counts``;
    ``tensors`` (by index: ``name, dtype, shape, shape_signature, non_unit_dims, constant, bytes,
    scale, zero_point``); ``inputs``/``outputs`` (``name, dtype, shape, shape_signature, int8,
    scale, zero_point``); ``io_int8``; ``dynamic_tensors`` (names with -1 in the signature);
    ``float_ops`` (names); ``constant_bytes``; ``macs``; ``peak_activation_bytes``;
    ``precisions``; ``weight_precision``; ``int8_mode``: ``full-integer`` (no float compute op),
    ``dynamic-range`` (int8 weights feeding float ops), ``mixed`` (integer and float compute ops),
    ``fp16`` (fp16 weights) or ``fp32``.
    """
    try:
        import tflite
    except ImportError as e:
        raise ModelSourceError("inspecting a .tflite artifact needs the tflite package: "
                               "pip install 'edgeft[litert]'") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelSourceError(f"{path}: no such .tflite file; pass the .tflite file of the artifact")
    with open(path, "rb") as f:
        buf = f.read()
    if buf[4:8] != b"TFL3":
        raise ModelSourceError(f"{path}: not a TFLite flatbuffer (file identifier {buf[4:8]!r}, expected b'TFL3')")
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() < 1:
        raise ModelSourceError(f"{path}: the TFLite model has no subgraph")
    g = model.Subgraphs(0)
    dtypes = _dtype_names()
    tensors = [_tensor(model, g.Tensors(i), dtypes) for i in range(g.TensorsLength())]

    ops: list[dict] = []
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        kind = _op_name(model, op)
        ins = [i for i in _vec(op.InputsLength(), op.InputsAsNumpy) if i >= 0]  # -1: an omitted optional input
        outs = [i for i in _vec(op.OutputsLength(), op.OutputsAsNumpy) if i >= 0]
        is_float = kind not in _CONVERT_OPS and any(tensors[i]["dtype"] == "float32" for i in ins + outs)
        name = tensors[outs[0]]["name"] if outs else f"<{kind}>#{k}"
        ops.append({"index": k, "op": kind, "name": name, "inputs": ins, "outputs": outs, "float": is_float,
                    "macs": int(_macs(kind, op, [tensors[i] for i in ins], [tensors[i] for i in outs]))})

    def io(indices) -> list[dict]:
        return [{k: tensors[i][k] for k in ("name", "dtype", "shape", "shape_signature", "scale", "zero_point")}
                | {"int8": tensors[i]["dtype"] in _INT8} for i in indices]

    g_in = _vec(g.InputsLength(), g.InputsAsNumpy)
    g_out = _vec(g.OutputsLength(), g.OutputsAsNumpy)
    consts = [t for t in tensors if t["constant"]]
    found = [(p, _numel(t["shape"])) for t in consts if (p := _precision(t["dtype"]))]
    large = [p for p, n in found if n >= LARGE_WEIGHT_ELEMENTS] or [p for p, _ in found]
    order = ["int4", "int8", "fp16", "fp32"]
    mode = _int8_mode(ops, tensors)
    precisions = {p for p, _ in found} | ({"int8"} if mode in ("full-integer", "mixed") else set())
    inputs, outputs = io(g_in), io(g_out)
    return {
        "path": path,
        "size_bytes": len(buf),
        "subgraphs": model.SubgraphsLength(),
        "ops": ops,
        "op_counts": dict(Counter(o["op"] for o in ops)),
        "tensors": tensors,
        "inputs": inputs,
        "outputs": outputs,
        "io_int8": all(t["int8"] for t in inputs + outputs),
        "dynamic_tensors": [t["name"] for t in tensors if any(d < 0 for d in t["shape_signature"])],
        "float_ops": [o["name"] for o in ops if o["float"]],
        "constant_bytes": int(sum(t["bytes"] for t in consts)),
        "macs": int(sum(o["macs"] for o in ops)),
        "peak_activation_bytes": _peak_live_bytes(ops, tensors, g_in),
        "precisions": sorted(precisions),
        "weight_precision": next((p for p in order if p in large), "fp32"),
        "int8_mode": mode,
    }


# --------------------------------------------------------------------------- Edge TPU


def _dims(t: dict) -> str:
    return "[" + ",".join(str(d) for d in t["shape_signature"]) + "]"


def _limit_problems(op: dict, tensors: list, limit, label: str) -> list[tuple[str, str, str]]:
    """The op's own limitations from the target's table (``tflite.op_limits``): (reason, fix, short why)."""
    out = []
    note = f" ({limit.note})" if limit.note else ""
    outs = [tensors[i] for i in op["outputs"]]
    ins = [tensors[i] for i in op["inputs"] if not tensors[i]["constant"]]
    if limit.max_output_non_unit_dims is not None and outs and outs[0]["non_unit_dims"] > limit.max_output_non_unit_dims:
        t = outs[0]
        out.append((f"{label} output '{t['name']}' {_dims(t)} has {t['non_unit_dims']} non-unit dims; the op maps "
                    f"with at most {limit.max_output_non_unit_dims}{note}",
                    f"reshape so {op['op']}'s output has <= {limit.max_output_non_unit_dims} non-unit dim(s) (e.g. a "
                    f"1x1 CONV_2D instead of FULLY_CONNECTED over a sequence, as litert-int8-edgetpu does)",
                    f"output {_dims(t)} exceeds the op's limit"))
    if ins and limit.max_input_non_unit_dims is not None and ins[0]["non_unit_dims"] > limit.max_input_non_unit_dims:
        t = ins[0]
        out.append((f"{label} input '{t['name']}' {_dims(t)} has {t['non_unit_dims']} non-unit dims; the op maps "
                    f"with at most {limit.max_input_non_unit_dims}{note}",
                    f"reshape {op['op']}'s input to <= {limit.max_input_non_unit_dims} non-unit dim(s) (litert-int8-edgetpu "
                    f"builds its softmax from MAX_POOL_2D, LOGISTIC and RSQRT)",
                    f"input {_dims(t)} exceeds the op's limit"))
    if ins and limit.max_input_elements is not None and _numel(ins[0]["shape"]) > limit.max_input_elements:
        t = ins[0]
        out.append((f"{label} input '{t['name']}' {_dims(t)} has {_numel(t['shape'])} elements; the op maps with at "
                    f"most {limit.max_input_elements}{note}", f"split {op['op']}'s input",
                    f"input {_dims(t)} has too many elements"))
    return out


def _op_problems(op: dict, info: dict, spec) -> list[tuple[str, str, str]]:
    """Why the Edge TPU compiler cannot map ``op``: (reason, fix, short why); empty when it maps."""
    tensors = info["tensors"]
    label = f"{op['op']} '{op['name']}'"
    out: list[tuple[str, str, str]] = []
    if spec.op_allowlist is not None and op["op"] not in spec.op_allowlist:
        out.append((f"{label} is not on the Edge TPU's supported operations",
                    f"replace {op['op']} with supported ops (it and every op after it run on the CPU)",
                    "not a supported operation"))
    limit = (spec.op_limits or {}).get(op["op"])
    if limit is not None:
        out.extend(_limit_problems(op, tensors, limit, label))
    dtypes: list[str] = []  # "float32 input 'x'" phrases, one reason per op
    others: list[str] = []  # int32/int64/bool activations (token ids, indices): not quantizable
    graph_inputs = {t["name"] for t in info["inputs"]}
    for role, idx in (("input", op["inputs"]), ("output", op["outputs"])):
        for i in dict.fromkeys(idx):
            t = tensors[i]
            if t["constant"]:
                if t["dtype"] not in _INT8 | {"int32"}:  # int8/uint8 weights, int32 biases and shape constants
                    dtypes.append(f"{t['dtype']} constant '{t['name']}'")
                continue
            if t["dtype"] not in _INT8:
                (dtypes if t["dtype"].startswith("float") else others).append(f"{t['dtype']} {role} '{t['name']}'")
            if any(d < 0 for d in t["shape_signature"]):
                where = "input" if t["name"] in graph_inputs else "tensor"
                out.append((f"{where} '{t['name']}' ({label}) has dynamic dim -1 {_dims(t)}",
                            "export with static shapes", f"dynamic dim in '{t['name']}'"))
            n = spec.innermost_dims
            if n is not None and any(d != 1 for d in t["shape_signature"][:-n]):
                out.append((f"tensor '{t['name']}' ({label}) has {t['non_unit_dims']} non-unit dims {_dims(t)}: "
                            f"only the {n} innermost dims may exceed 1", f"reshape to <={n} non-unit dims",
                            f"'{t['name']}' has {t['non_unit_dims']} non-unit dims"))
    if others:
        out.insert(0, (f"{label} has {', '.join(others)}", _FIX_NOT_8BIT, "not 8-bit: " + ", ".join(others)))
    if dtypes:
        out.insert(0, (f"{label} has {', '.join(dtypes)}", _FIX_EDGE_TPU_INT, "not 8-bit: " + ", ".join(dtypes)))
    return list(dict.fromkeys(out))


def edge_tpu_plan(info: dict, device: DeviceProfile) -> dict:
    """Where the Edge TPU compiler splits the graph: ops mapped in order until the first failing op.

    Returns ``{"ops_total", "ops_mapped", "mac_fraction", "split", "ops_on_cpu", "cpu_ops",
    "problems", "problems_total", "constant_mb", "onchip_fit"}``; ``split`` is None when every op
    maps, else ``{"index", "name", "op", "why"}``; ``cpu_ops``: names of the ops left on the CPU
    (first 50); ``problems``: ``{"index", "name", "op", "what", "fix", "short"}`` for each op that
    could not map on its own, in order (first 50 of ``problems_total``).
    """
    spec = device.tflite
    ops = info["ops"]
    problems = []
    for op in ops:
        for what, fix, short in _op_problems(op, info, spec):
            problems.append({"index": op["index"], "name": op["name"], "op": op["op"], "what": what, "fix": fix,
                             "short": short})
    first = problems[0]["index"] if problems else len(ops)
    total_macs = info["macs"]
    mapped_macs = sum(o["macs"] for o in ops[:first])
    split = None
    if problems:
        why = "; ".join(p["short"] for p in problems if p["index"] == first)
        split = {"index": first, "name": ops[first]["name"], "op": ops[first]["op"], "why": why}
    const_mb = info["constant_bytes"] / MB
    return {"ops_total": len(ops), "ops_mapped": first,
            "mac_fraction": (mapped_macs / total_macs) if total_macs else (first / len(ops) if ops else 1.0),
            "split": split, "ops_on_cpu": len(ops) - first, "cpu_ops": [o["name"] for o in ops[first:]][:_CPU_OPS_KEPT],
            "problems": problems[:_PROBLEMS_KEPT], "problems_total": len(problems),
            "constant_mb": round(const_mb, 3),
            "onchip_fit": None if device.onchip_param_mb is None else const_mb <= device.onchip_param_mb}


def _edge_tpu_reasons(info: dict, device: DeviceProfile, plan: dict, out: dict) -> None:
    dev = device.name
    if plan["split"] is not None:
        s = plan["split"]
        n_cpu = plan["ops_total"] - plan["ops_mapped"]
        out["reasons"].append(
            f"{dev} maps {plan['ops_mapped']}/{plan['ops_total']} ops ({plan['mac_fraction']:.0%} of MACs): the "
            f"Edge TPU compiler stops at op {s['index']} {s['op']} '{s['name']}' ({s['why']}); it and the "
            f"{n_cpu - 1} op(s) after it run on the CPU")
        shown = plan["problems"][:_OPS_SHOWN]
        for p in shown:
            out["reasons"].append(f"{p['what']}: {p['fix']}")
        if plan["problems_total"] > len(shown):
            out["reasons"].append(f"+{plan['problems_total'] - len(shown)} more problem(s) in later ops "
                                  f"(tflite.edge_tpu.problems)")
        for fix in dict.fromkeys(p["fix"] for p in plan["problems"]):
            out["suggestions"].append(f"{fix} for {dev}")
    if plan["onchip_fit"] is False:
        out["warnings"].append(
            f"{plan['constant_mb']:.1f} MB of weights exceed {dev}'s {device.onchip_param_mb:g} MB of on-chip "
            f"parameter memory (onchip_param_mb): weights stream from host memory on every inference: slower")


# --------------------------------------------------------------------------- TFLite Micro

_TFLM_PROBE = r"""
import json, os, sys, tempfile
import numpy as np
from tflite_micro import runtime
path, arena, n_in = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    it = runtime.Interpreter.from_file(path, arena_size=arena)
    for i in range(n_in):
        d = it.get_input_details(i)
        it.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
    it.invoke()
except Exception as e:
    print(json.dumps({"ran": False, "error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
# print_allocations writes the RecordingMicroAllocator's report to fd 2 (C stderr): capture it
sys.stderr.flush()
saved = os.dup(2)
with tempfile.TemporaryFile() as f:
    os.dup2(f.fileno(), 2)
    try:
        it.print_allocations()
    finally:
        os.dup2(saved, 2)
    f.seek(0)
    text = f.read().decode(errors="replace")
used = None
for line in text.splitlines():
    if "Arena allocation total" in line:
        used = int(line.split("total")[1].split()[0])
print(json.dumps({"ran": True, "arena_used_bytes": used}))
"""


def run_tflite_micro(path: str, arena_bytes: int, n_inputs: int, timeout: float = TFLM_TIMEOUT_S) -> dict:
    """Run ``path`` once (zero inputs) in the TFLite Micro interpreter with an arena of ``arena_bytes``.

    Runs in a child process because the interpreter crashes (SIGSEGV) when the arena is too small.
    Returns ``{"ran": bool, "arena_bytes", "arena_used_bytes" (from the RecordingMicroAllocator),
    "error"}``.
    """
    try:
        import tflite_micro  # noqa: F401
    except ImportError as e:
        raise ModelSourceError("running a .tflite artifact in TFLite Micro needs the tflite-micro package: "
                               "pip install 'edgeft[litert]'") from e
    try:
        proc = subprocess.run([sys.executable, "-c", _TFLM_PROBE, path, str(int(arena_bytes)), str(n_inputs)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ran": False, "arena_bytes": int(arena_bytes), "arena_used_bytes": None,
                "error": f"TFLite Micro did not finish in {timeout:g} s"}
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and last.startswith("{"):
        res = json.loads(last)
        if not res["ran"]:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            res["error"] = res["error"] + (f" ({tail})" if tail else "")
    else:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        res = {"ran": False, "error": f"TFLite Micro crashed ({why}){': ' + tail if tail else ''}"}
    return {"arena_bytes": int(arena_bytes), "arena_used_bytes": None, **res}


def _mcu_reasons(info: dict, device: DeviceProfile, out: dict) -> Optional[dict]:
    dev = device.name
    size_mb = info["size_bytes"] / MB
    arena_mb = device.budgets.ram_mb or device.memory.model_budget_mb
    est_mb = info["peak_activation_bytes"] / MB
    fits = True
    if device.max_model_mb is not None and size_mb > device.max_model_mb:
        fits = False
        out["reasons"].append(f"model is {size_mb:.2f} MB; {dev}'s flash holds at most {device.max_model_mb:g} MB "
                              f"(max_model_mb)")
        out["suggestions"].append(f"use a smaller model for {dev} (int8 weights well under "
                                  f"{device.max_model_mb:g} MB)")
    if est_mb > arena_mb:
        fits = False
        out["reasons"].append(f"live activations peak at {est_mb:.2f} MB; {dev}'s tensor arena is {arena_mb:g} MB "
                              f"(budgets.ram_mb)")
        out["suggestions"].append(f"shrink the activations for {dev} (smaller inputs or layers)")
    if not fits or info["int8_mode"] != "full-integer":
        return None
    res = run_tflite_micro(info["path"], int(arena_mb * MB), len(info["inputs"]))
    if not res["ran"]:
        out["reasons"].append(f"TFLite Micro could not run the model in a {arena_mb:g} MB arena: {res['error']}")
        out["suggestions"].append(f"use only TFLite Micro kernels and fit the arena of {dev}")
    return res


# --------------------------------------------------------------------------- check

_MODE_WHAT = {"dynamic-range": "dynamic-range int8 (int8 weights, float activations)",
              "mixed": "a partly float graph", "fp16": "fp16 weights", "fp32": "a float32 graph"}


def _mode_reason(info: dict, device: DeviceProfile, out: dict) -> None:
    mode = info["int8_mode"]
    dev = device.name
    floats = "fp32" in device.precisions or "fp16" in device.precisions
    if mode == "full-integer":
        ok = bool({"full-integer", "static"} & set(device.int8_modes)) and "int8" in device.precisions
    elif mode == "dynamic-range":
        ok = "dynamic" in device.int8_modes and floats
    else:
        ok = floats
    if not ok:
        names = info["float_ops"][:3]
        more = f", +{len(info['float_ops']) - 3} more" if len(info["float_ops"]) > 3 else ""
        where = f" (float ops: {', '.join(names)}{more})" if names else ""
        out["reasons"].append(f"{_MODE_WHAT.get(mode, mode)} is not supported on {dev}: it runs full-integer int8 "
                              f"tflite only{where}")
        out["suggestions"].append(f"{_FIX_FULL_INT} for {dev}")


def check_tflite(artifact: dict, device: DeviceProfile) -> dict:
    """``compat.check`` for a ``format: tflite`` artifact whose ``"tflite"`` key holds :func:`inspect_tflite`.

    Returns ``{"compatible", "reasons", "suggestions", "warnings", "tflite": {...}}``; the ``tflite``
    entry carries the Edge TPU plan (``edge_tpu``) or the TFLite Micro run (``tflite_micro``).
    """
    info = artifact.get("tflite")
    dev = device.name
    out: dict = {"compatible": False, "reasons": [], "suggestions": [], "warnings": []}
    if info is None:
        out["reasons"].append(f".tflite graph not inspected: cannot be shown to run on {dev}")
        out["suggestions"].append("validate the artifact through edgeft validate (it inspects the .tflite file)")
        return out
    runtime = device.tflite.runtime if device.tflite is not None else "litert"
    details: dict = {"runtime": runtime, "int8_mode": info["int8_mode"], "io_int8": info["io_int8"]}
    if runtime == "edgetpu":
        plan = edge_tpu_plan(info, device)
        details["edge_tpu"] = plan
        _edge_tpu_reasons(info, device, plan, out)
    else:
        _mode_reason(info, device, out)
        if device.static_shapes:
            dyn = [t for t in info["inputs"] if any(d < 0 for d in t["shape_signature"])]
            for t in dyn:
                out["reasons"].append(f"input '{t['name']}' has dynamic dim -1 {_dims(t)}: {dev} requires static "
                                      f"shapes; export with static shapes")
        if runtime == "tflite-micro":
            details["tflite_micro"] = _mcu_reasons(info, device, out)
    if runtime != "tflite-micro" and device.max_model_mb is not None and info["size_bytes"] / MB > device.max_model_mb:
        out["reasons"].append(f"artifact is {info['size_bytes'] / MB:.1f} MB; {dev} loads at most "
                              f"{device.max_model_mb:g} MB (max_model_mb)")
    est = artifact.get("est_ram_mb")
    if runtime != "tflite-micro" and est is not None and est > device.memory.model_budget_mb:
        out["reasons"].append(f"estimated RAM {est:.0f} MB exceeds {dev}'s model budget of "
                              f"{device.memory.model_budget_mb} MB (memory.model_budget_mb)")
    out["compatible"] = not out["reasons"]
    out["tflite"] = details
    return out
