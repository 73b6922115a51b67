"""Artifact × device compatibility: formats, precisions, int8 modes, ops, static shapes, size, RAM.

Three pure functions:

- :func:`inspect_onnx` reads an ONNX graph (without its external weight data) and summarises
  what a device cares about: opset, op types with node names, input shapes, precisions and the
  int8 quantization mode.
- :func:`check` compares one artifact (a plain dict, see its docstring) with one
  :class:`~edgeft.config.schema.DeviceProfile` and returns every reason it cannot run there,
  each naming the device and, for graph problems, the offending node or input names, plus
  suggestions and non-blocking warnings.
- :func:`estimate_ram_mb` estimates the RAM a decoder needs (weights + KV cache + activations
  + runtime overhead) from its size and HF config.

``onnx`` is imported inside :func:`inspect_onnx` only, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Iterable, Iterator, Optional, Union

from edgeft.config.schema import DeviceProfile
from edgeft.errors import ModelSourceError

log = logging.getLogger(__name__)

__all__ = ["check", "estimate_ram_mb", "inspect_onnx", "LARGE_WEIGHT_ELEMENTS", "RUNTIME_OVERHEAD_MB"]

MB = 1024 * 1024

#: Initializers with at least this many elements count as "large weights" for ``weight_precision``
#: (scales, zero points, biases and norm weights are smaller and stay fp32 in a quantized model).
LARGE_WEIGHT_ELEMENTS = 1024

#: Fixed allowance for the runtime itself (ORT session, allocator arenas, tokenizer), MiB.
RUNTIME_OVERHEAD_MB = 60.0

#: Node names listed per op type in ``inspect_onnx(...)["op_nodes"]`` and in a reason line.
_NODES_KEPT = 5
_NODES_SHOWN = 3

# Ops that quantize activations at run time (ORT dynamic quantization, before/after fusion).
_DYNAMIC_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention"}
# Integer compute fed by either dynamic or static activation quantization.
_INTEGER_OPS = {"MatMulInteger", "ConvInteger"}
# Ops carrying a ``bits`` attribute for block-quantized weights (ORT contrib, default 4).
_NBITS_OPS = {"MatMulNBits": 1, "GatherBlockQuantized": 0}  # op -> index of the packed weight input

_MODE_WHAT = {
    "dynamic": "int8 dynamic quantization (DynamicQuantizeLinear/MatMulInteger)",
    "static": "int8 static quantization (QDQ with float graph inputs/outputs)",
    "full-integer": "full-integer int8 quantization",
    "weight-only": "int8 weight-only quantization (int8 weights, float activations)",
}


# --------------------------------------------------------------------------- inspect


def _walk_nodes(graph) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def _walk_initializers(graph) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_initializers(attr.g)
            for sub in attr.graphs:
                yield from _walk_initializers(sub)


def _dtype_precision(data_type: int) -> Optional[str]:
    """Our precision class of an ONNX tensor element type (None: not a weight type, e.g. int64)."""
    from onnx import TensorProto as T

    table = {
        T.FLOAT: "fp32",
        T.DOUBLE: "fp32",
        T.FLOAT16: "fp16",
        T.BFLOAT16: "fp16",  # a 16-bit float; the profiles do not distinguish bf16
        T.INT8: "int8",
        T.UINT8: "int8",
    }
    for name in ("INT4", "UINT4"):  # onnx >= 1.16
        if hasattr(T, name):
            table[getattr(T, name)] = "int4"
    return table.get(data_type)


def _is_integer_type(elem_type: int) -> bool:
    from onnx import TensorProto as T

    return elem_type in {
        T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.BOOL,
    } | {getattr(T, n) for n in ("INT4", "UINT4") if hasattr(T, n)}


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _shape(value_info) -> Optional[list[Union[int, str]]]:
    """Dims of a graph input: ints, symbolic names, or "?" for an unnamed unknown dim; None: unknown rank."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims: list[Union[int, str]] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dims


def _attr_int(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def inspect_onnx(path: Union[str, os.PathLike]) -> dict:
    """Summarise an ONNX graph for compatibility checks (weights in external data are not read).

    Returns a dict:

    - ``opset``: opset version of the default (``ai.onnx``) domain, None when not imported.
    - ``ops``: ``{op_type: count}`` over every node, subgraphs included.
    - ``op_nodes``: ``{op_type: [first 5 node names]}``; an unnamed node shows as ``<op_type>#<index>``.
    - ``inputs``: ``[{"name", "shape"}]`` for the real graph inputs (initializers listed as
      inputs by old exporters are left out); a dim is an int, its symbolic name, or ``"?"``;
      ``shape`` is None for an input of unknown rank.
    - ``dynamic_inputs``: names of inputs with any non-int dim (or unknown rank).
    - ``precisions``: sorted subset of ``fp32, fp16, int4, int8`` present in the graph, from
      initializer (and Constant) element types and from ops: ``MatMulNBits`` /
      ``GatherBlockQuantized`` with ``bits=4`` -> int4, ``bits=8`` -> int8 (their packed uint8
      weights are classified by ``bits``, not by dtype); DynamicQuantizeLinear, MatMulInteger,
      ConvInteger, QuantizeLinear, DequantizeLinear and QLinear* -> int8.
    - ``int8_mode``: None, or

      * ``"dynamic"``: DynamicQuantizeLinear (or a fused dynamic op) is present, or
        MatMulInteger/ConvInteger without any static quantization op;
      * ``"static"``: QuantizeLinear or QLinear* ops without run-time activation quantization;
      * ``"full-integer"``: static, and every graph input and output has an integer element
        type (so token ids / masks, which are int64 anyway, do not prevent it, but float
        inputs, past KV or logits do);
      * ``"weight-only"``: int8 weights dequantized to float (MatMulNBits/GatherBlockQuantized
        with ``bits=8``, or DequantizeLinear without any QuantizeLinear).

    - ``weight_precision``: the lowest precision among the large weights (initializers with at
      least :data:`LARGE_WEIGHT_ELEMENTS` elements, or all weights when none is that large):
      "int4" if any ``bits=4`` block-quantized op or large int4 tensor, else "int8", else
      "fp16", else "fp32".
    """
    # Over 80 lines: a third is the docstring defining the summary; the body is one walk over nodes, initializers and
    # inputs filling its keys, which split would each re-walk the graph or pass the partial summary around.
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a core dependency
        raise ModelSourceError("inspecting an ONNX artifact needs the onnx package: pip install onnx") from e

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelSourceError(f"{path}: no such ONNX file; pass the .onnx file of the artifact")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelSourceError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    graph = model.graph

    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), None)

    ops: Counter = Counter()
    op_nodes: dict[str, list[str]] = {}
    nbits: dict[str, int] = {}  # packed weight initializer name -> bits
    bits_seen: set[int] = set()
    for index, node in enumerate(_walk_nodes(graph)):
        ops[node.op_type] += 1
        names = op_nodes.setdefault(node.op_type, [])
        if len(names) < _NODES_KEPT:
            names.append(node.name or f"<{node.op_type}>#{index}")
        if node.op_type in _NBITS_OPS:
            bits = _attr_int(node, "bits", 4)
            bits_seen.add(bits)
            w = _NBITS_OPS[node.op_type]
            # packed weights and their zero points are uint8 containers of `bits`-bit values
            packed = [node.input[w]] if len(node.input) > w else []
            if node.op_type == "MatMulNBits" and len(node.input) > 3:
                packed.append(node.input[3])
            for name in packed:
                if name:
                    nbits[name] = bits

    # --- precisions from weight dtypes
    found: list[tuple[str, int]] = []  # (precision, numel)
    for init in _walk_initializers(graph):
        if init.name in nbits:
            found.append(("int4" if nbits[init.name] <= 4 else "int8", _numel(init.dims)))
            continue
        p = _dtype_precision(init.data_type)
        if p:
            found.append((p, _numel(init.dims)))
    for node in _walk_nodes(graph):
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    p = _dtype_precision(a.t.data_type)
                    if p:
                        found.append((p, _numel(a.t.dims)))
    precisions = {p for p, _ in found}
    weight_dtypes = set(precisions)

    # --- precisions and int8 mode from ops
    op_set = set(ops)
    has_dynamic = bool(op_set & _DYNAMIC_OPS)
    has_integer = bool(op_set & _INTEGER_OPS)
    has_qlinear = any(o.startswith("QLinear") for o in op_set) or "QGemm" in op_set
    has_quant = "QuantizeLinear" in op_set or has_qlinear
    has_dequant = "DequantizeLinear" in op_set
    if has_dynamic or has_integer or has_quant:
        precisions.add("int8")  # int8 activations (DequantizeLinear alone: weights, seen by dtype)
    for bits in bits_seen:
        precisions.add("int4" if bits <= 4 else "int8")

    int8_mode: Optional[str] = None
    if has_dynamic or (has_integer and not has_quant):
        int8_mode = "dynamic"
    elif has_quant:
        int8_mode = "static"
        io = list(graph.input) + list(graph.output)
        init_names = {i.name for i in graph.initializer}
        io = [v for v in io if v.name not in init_names]
        if io and all(
            v.type.HasField("tensor_type") and _is_integer_type(v.type.tensor_type.elem_type) for v in io
        ):
            int8_mode = "full-integer"
    elif (8 in bits_seen) or (has_dequant and "int8" in weight_dtypes):
        int8_mode = "weight-only"

    # --- weight precision: lowest among the large weights
    large = [p for p, n in found if n >= LARGE_WEIGHT_ELEMENTS] or [p for p, _ in found]
    if 4 in bits_seen or any(b < 4 for b in bits_seen) or "int4" in large:
        weight_precision = "int4"
    elif 8 in bits_seen or "int8" in large:
        weight_precision = "int8"
    elif "fp16" in large:
        weight_precision = "fp16"
    else:
        weight_precision = "fp32"

    # --- inputs
    init_names = {i.name for i in graph.initializer}
    inputs = [{"name": v.name, "shape": _shape(v)} for v in graph.input if v.name not in init_names]
    dynamic = [i["name"] for i in inputs if i["shape"] is None or any(not isinstance(d, int) for d in i["shape"])]

    return {
        "opset": opset,
        "ops": dict(ops),
        "op_nodes": op_nodes,
        "inputs": inputs,
        "dynamic_inputs": dynamic,
        "precisions": sorted(precisions),
        "int8_mode": int8_mode,
        "weight_precision": weight_precision,
    }


# --------------------------------------------------------------------------- check


def _join(items: Iterable[Any]) -> str:
    return ", ".join(str(i) for i in items)


def _fmt_mb(mb: float) -> str:
    return f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def _floats(device: DeviceProfile) -> bool:
    """Whether the device executes float activations (needed by weight-only int8/int4)."""
    return "fp32" in device.precisions or "fp16" in device.precisions


def _int8_fix(device: DeviceProfile) -> str:
    """How to quantize to int8 for this device, as a phrase."""
    modes = set(device.int8_modes)
    if "static" in modes:
        return "a static int8 scheme (calibrated QDQ)"
    if "full-integer" in modes:
        return "a static full-integer scheme (calibrated QDQ with integer graph inputs/outputs)"
    return "a dynamic int8 scheme"


def _precision_fix(device: DeviceProfile) -> str:
    if "int8" in device.precisions:
        return f"re-quantize to int8 for {device.name} with {_int8_fix(device)}"
    return f"produce one of {device.name}'s precisions ({_join(device.precisions)})"


def _format_fix(device: DeviceProfile) -> str:
    """How to produce an artifact the device loads, as a phrase."""
    if "tflite" in device.formats and set(device.int8_modes) <= {"full-integer", "static"}:
        preset = "litert-int8-edgetpu" if device.tflite is not None and device.tflite.runtime == "edgetpu" \
            else "litert-int8-full"
        return f"export with {preset} (full-integer int8 .tflite; litert-image-int8 for an image model) for {device.name}"
    return f"export to {device.formats[0]} for {device.name}"


def _mode_ok(mode: Optional[str], device: DeviceProfile) -> Optional[bool]:
    """Whether an int8 artifact of ``mode`` runs on ``device``; None when the mode is unknown."""
    modes = set(device.int8_modes)
    if mode == "full-integer":  # a full-integer graph is also a valid static graph
        return bool(modes & {"full-integer", "static"})
    if mode in ("dynamic", "static"):
        return mode in modes
    if mode == "weight-only":
        return _floats(device)
    return None


def _ops_outside(info: dict, allow: Iterable[str]) -> list[tuple[str, int, list[str]]]:
    allowed = set(allow)
    outside = [(op, n, list(info.get("op_nodes", {}).get(op, []))) for op, n in info.get("ops", {}).items()
               if op not in allowed]
    return sorted(outside, key=lambda t: (-t[1], t[0]))


_OP_TYPES_SHOWN = 6


def _describe_ops(outside: list[tuple[str, int, list[str]]]) -> str:
    """The most frequent op types with counts and a few node names; the rest by type name only."""
    parts = []
    for op, n, nodes in outside[:_OP_TYPES_SHOWN]:
        shown = nodes[:_NODES_SHOWN]
        more = n - len(shown)
        names = _join(shown) + (f", +{more} more" if more > 0 else "")
        parts.append(f"{op} x{n} ({names})" if names else f"{op} x{n}")
    rest = outside[_OP_TYPES_SHOWN:]
    if rest:
        parts.append(f"+{len(rest)} more op types: " + ", ".join(f"{op} x{n}" for op, n, _ in rest))
    return "; ".join(parts)


def _describe_dynamic(info: dict) -> tuple[str, list[str]]:
    """Dynamic inputs grouped by name pattern (past_key_values.N.key ...) with their symbolic dims."""
    import re

    shapes = {i["name"]: i["shape"] for i in info.get("inputs", [])}
    groups: dict[tuple[str, str], list[str]] = {}
    params: list[str] = []
    for name in info.get("dynamic_inputs", []):
        shape = shapes.get(name)
        if shape is None:
            dims = "unknown rank"
        else:
            symbolic = [str(d) for d in shape if not isinstance(d, int)]
            params += [d for d in symbolic if d != "?" and d not in params]
            dims = _join(symbolic)
        groups.setdefault((re.sub(r"\.\d+\.", ".N.", name), dims), []).append(name)
    parts = []
    for (pattern, dims), names in groups.items():
        label = names[0] if len(names) == 1 else f"{pattern} ({len(names)} inputs)"
        parts.append(f"{label} [{dims}]")
    return "; ".join(parts), params


def check(artifact: dict, device: DeviceProfile) -> dict:
    """Whether ``artifact`` can run on ``device``, with every reason when it cannot.

    ``artifact`` is a plain dict: ``name``; ``format`` (onnx | pytorch | torchscript | gguf | tflite | pte);
    ``precision`` (weight precision: fp32 | fp16 | int8 | int4); ``int8_mode`` (None, dynamic,
    static, full-integer or weight-only); ``size_bytes``; ``est_ram_mb`` (float or None, see
    :func:`estimate_ram_mb`); ``onnx`` (the :func:`inspect_onnx` dict, or None). A missing
    ``precision`` / ``int8_mode`` is taken from the ``onnx`` dict.

    A format outside ``device.formats`` is the only reason given. A ``tflite`` artifact carries
    ``"tflite"`` (the :func:`~edgeft.validate.tflite_compat.inspect_tflite` dict) and is checked by
    :func:`~edgeft.validate.tflite_compat.check_tflite` (Edge TPU mapping, TFLite Micro run, int8
    mode); its result has a ``tflite`` entry with those details.

    Otherwise, checks, each a reason naming the device: precision in
    ``device.precisions``; for int8, the mode in ``device.int8_modes`` (a full-integer graph
    also satisfies "static"; weight-only int8 needs float activations, i.e. fp32/fp16 in
    ``device.precisions``); op types outside ``device.op_allowlist`` (one line: op types with
    counts and up to 3 node names each); dynamic inputs with their symbolic dims when
    ``device.static_shapes``; size above ``max_model_mb``; ``est_ram_mb`` above
    ``memory.model_budget_mb``. A size above ``onchip_param_mb`` is a warning only (the weights
    stream from RAM: slower, still runs).

    Returns ``{"compatible": bool, "reasons": [str], "suggestions": [str], "warnings": [str]}``.
    """
    # Over 80 lines: a third is the docstring; the rest is one check per device rule, a few lines each, in the order
    # the report lists reasons and suggestions.
    dev = device.name
    reasons: list[str] = []
    suggestions: list[str] = []
    warnings: list[str] = []
    info: Optional[dict] = artifact.get("onnx")
    fmt = artifact.get("format")
    precision = artifact.get("precision") or (info or {}).get("weight_precision")
    mode = artifact.get("int8_mode")
    if mode is None and info:
        mode = info.get("int8_mode")

    # format: a format the device cannot load is the one reason (its graph rules do not apply)
    if fmt not in device.formats:
        reasons.append(f"format {fmt} is not supported on {dev} (formats: {_join(device.formats)})")
        suggestions.append(_format_fix(device))
        return {"compatible": False, "reasons": reasons, "suggestions": suggestions, "warnings": warnings}
    if fmt == "tflite":
        from edgeft.validate.tflite_compat import check_tflite

        return check_tflite(artifact, device)

    # precision
    if precision is None:
        warnings.append(f"weight precision unknown: not checked against {dev}'s precisions")
    elif precision not in device.precisions:
        ops = (info or {}).get("ops", {})
        if precision == "int4":
            what = "int4 MatMulNBits" if "MatMulNBits" in ops else "int4 weights"
            reasons.append(f"{what} is not supported on {dev} (precisions: {_join(device.precisions)})")
        else:
            reasons.append(f"{precision} weights are not supported on {dev} (precisions: {_join(device.precisions)})")
        suggestions.append(_precision_fix(device))

    # int8 mode (only when int8 itself is accepted: otherwise the precision reason says it all)
    if precision == "int8" and "int8" in device.precisions:
        ok = _mode_ok(mode, device)
        runs = f"it runs only {' or '.join(device.int8_modes)} int8"
        if ok is False:
            what = _MODE_WHAT.get(mode, f"int8 {mode} quantization")
            reasons.append(f"{what} is not supported on {dev}: {runs}; use {_int8_fix(device)}")
            suggestions.append(f"re-quantize for {dev} with {_int8_fix(device)}")
        elif ok is None:
            if set(device.int8_modes) >= {"dynamic", "static", "full-integer"}:
                warnings.append(f"int8 quantization mode unknown: assumed to run on {dev}")
            else:
                reasons.append(
                    f"int8 artifact of unknown quantization mode cannot be shown to run on {dev}: {runs}"
                )
                suggestions.append(f"re-quantize for {dev} with {_int8_fix(device)}")

    # graph checks
    if info is None:
        if fmt == "onnx" and (device.op_allowlist is not None or device.static_shapes):
            warnings.append(f"ONNX graph not inspected: ops and input shapes not checked against {dev}")
    else:
        if device.op_allowlist is not None:
            outside = _ops_outside(info, device.op_allowlist)
            if outside:
                reasons.append(
                    f"{dev} cannot run {len(outside)} op type(s) outside its op allow-list: {_describe_ops(outside)}"
                )
                suggestions.append(
                    f"on the real {dev} these ops fall back to the host CPU and split the graph; remove or "
                    f"replace them in the export (op allow-list: devices/{dev}.yaml)"
                )
        opset = info.get("opset")
        if device.max_opset is not None and isinstance(opset, int) and opset > device.max_opset:
            reasons.append(f"ONNX opset {opset} is newer than {dev} runs (max_opset {device.max_opset})")
            suggestions.append(f"export with an opset <= {device.max_opset} for {dev} (export preset `opset:`)")
        if device.static_shapes and info.get("dynamic_inputs"):
            described, params = _describe_dynamic(info)
            reasons.append(f"{dev} requires static input shapes; dynamic inputs: {described}")
            example = params[0] if params else "batch"
            suggestions.append(
                f"fix every symbolic dim for {dev}, e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed "
                f"--dim_param {example} --dim_value 1 model.onnx model.fixed.onnx"
                + (f" (dims: {_join(params)})" if params else "")
            )

    # size and memory
    size_bytes = artifact.get("size_bytes")
    if size_bytes is not None:
        size_mb = size_bytes / MB
        if device.max_model_mb is not None and size_mb > device.max_model_mb:
            reasons.append(
                f"artifact is {_fmt_mb(size_mb)} MB; {dev} loads at most {device.max_model_mb:g} MB (max_model_mb)"
            )
            suggestions.append(f"use a lower precision or a smaller model for {dev}")
        if device.onchip_param_mb is not None and size_mb > device.onchip_param_mb:
            warnings.append(
                f"{_fmt_mb(size_mb)} MB of weights exceed {dev}'s {device.onchip_param_mb:g} MB of on-chip "
                f"parameter memory: weights stream from RAM: slower"
            )
    est = artifact.get("est_ram_mb")
    if est is not None and est > device.memory.model_budget_mb:
        reasons.append(
            f"estimated RAM {_fmt_mb(est)} MB exceeds {dev}'s model budget of "
            f"{device.memory.model_budget_mb} MB (memory.model_budget_mb)"
        )
        suggestions.append(f"shorten the context or use a lower precision to fit {dev}")

    return {"compatible": not reasons, "reasons": reasons, "suggestions": suggestions, "warnings": warnings}


# --------------------------------------------------------------------------- RAM estimate


def _cfg(config: dict, *keys: str) -> Optional[Any]:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return None


def estimate_ram_mb(size_bytes: int, config: Optional[dict], context_len: int, batch: int = 1) -> float:
    """Estimated peak RAM of a decoder artifact, MiB.

    ``ram = weights + kv_cache + activations + overhead``, with (bytes, fp32 cache/activations):

    - ``weights = size_bytes`` (the artifact as stored; weights are mapped/loaded once);
    - ``kv_cache = 2 * layers * kv_heads * head_dim * context_len * 4 * batch``
      (keys and values for every layer), from the HF ``config``: ``num_hidden_layers``,
      ``num_key_value_heads`` (else ``num_attention_heads``), ``head_dim`` (else
      ``hidden_size / num_attention_heads``); GPT-2 style ``n_layer``/``n_head``/``n_embd`` and a
      nested ``text_config`` are accepted too;
    - ``activations = (hidden_size * context_len * 4 * 8 + vocab_size * 4 * 2) * batch``
      (about eight live hidden-state buffers over the context, and two rows of logits);
    - ``overhead =`` :data:`RUNTIME_OVERHEAD_MB` (60 MiB for the runtime itself).

    Without a config (or for an encoder whose config lacks the fields) only weights and
    overhead are counted.
    """
    total = float(size_bytes)
    config = dict(config or {})
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    layers = _cfg(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _cfg(config, "num_attention_heads", "n_head")
    kv_heads = _cfg(config, "num_key_value_heads") or heads
    hidden = _cfg(config, "hidden_size", "n_embd", "d_model")
    head_dim = _cfg(config, "head_dim") or (hidden / heads if hidden and heads else None)
    vocab = _cfg(config, "vocab_size") or 0
    if layers and kv_heads and head_dim:
        total += 2 * layers * kv_heads * head_dim * context_len * 4 * batch
    if hidden:
        total += (hidden * context_len * 4 * 8 + vocab * 4 * 2) * batch
    return total / MB + RUNTIME_OVERHEAD_MB
