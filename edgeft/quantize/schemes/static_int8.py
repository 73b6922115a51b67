"""ONNX Runtime static int8 (QDQ): int8 weights, activation ranges fixed from calibration text.

``quantize_static`` runs the graph on the calibration windows, records the range of every tensor
feeding or leaving a quantized op, and writes QuantizeLinear/DequantizeLinear pairs with those
fixed scales around it (``QuantFormat.QDQ``). NPUs and int8 accelerators take this form; on
the CPU ONNX Runtime fuses the QDQ pairs into integer kernels where it can.

Calibration feeds each token window as one prefill with an empty KV cache (past length 0), the
same call :class:`~edgeft.runtime.lm.OrtLM` makes to score a window, so the recorded ranges are
those of prompt processing. Decode steps see the same weights and activations of the same
layers, one token at a time.

Graph inputs and outputs stay float (``int8_mode`` "static"). Full-integer mode (option
``full_integer``, or the ``int8-full-integer`` scheme, for targets whose profiles list
``int8_modes: full-integer`` such as Edge-TPU-style accelerators) also gives integer graph I/O:
an encoder/classifier (BERT, MiniLM) already takes int64 token ids and masks, and each float
output (logits) gets a QuantizeLinear with a scale calibrated on the same windows, recorded in
the model metadata (``edgeft.output_quantization``) for whoever needs float scores; the argmax
label needs none. Static shapes come from the export (``export.static_shapes``); a graph with a
fixed sequence length is calibrated on windows padded to it. Decoder graphs raise
:class:`~edgeft.errors.UnsupportedError`: their float inputs are the KV cache fed back every step,
which would need int8 KV with fixed calibrated scales that neither ORT's quantizer nor edgeft's
runtime supports.

Measured on the quickstart SmolLM2-135M export (16 calibration windows of 128 tokens; perplexity
on 9 held-out windows of 256): lossy, from the activation outliers of the MLP down projections.
minmax +62% perplexity (top-1 agreement 0.79), percentile +25% (0.74), entropy +68% (0.76), all
at 0.46x the fp32 size; minmax with the 30 ``down_proj`` MatMuls in ``nodes_to_exclude`` +2.4%
(0.94) at 0.61x. Prefer a weight-only scheme on CPUs; use this one where a device needs static int8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal, Sequence, get_args

import numpy as np
from pydantic import Field, field_validator

from edgeft.config.options import Options
from edgeft.errors import ConfigError, UnsupportedError
from edgeft.quantize.registry import SCHEMES, Scheme

log = logging.getLogger(__name__)

CalibrateMethod = Literal["minmax", "entropy", "percentile"]
ActivationType = Literal["qint8", "quint8"]
CALIBRATE_METHODS = get_args(CalibrateMethod)
ACTIVATION_TYPES = get_args(ActivationType)
# Histogram bins for the entropy (KL) threshold search over 128 quantized bins: 512 lets it clip
# outliers (thresholds from 1/4 of the range up); 2048 searches finer but costs ~7x the time per tensor.
ENTROPY_BINS = 512


class FullIntegerOptions(Options):
    """Options of int8-full-integer (integer graph I/O always): those of int8-static but full_integer."""

    owner: ClassVar[str] = "quantize scheme int8-full-integer"
    per_channel: bool = Field(True, description="per-output-channel weight scales (MatMul axis 1)")
    activation_type: ActivationType = Field("qint8", description="activation type: qint8 (signed) or quint8 "
                                                                 "(unsigned)")
    activation_symmetric: bool = Field(False, description="symmetric activation ranges (zero point 0 / 128)")
    calibrate_method: CalibrateMethod = Field("minmax", description="activation range from calibration: minmax, "
                                                                    "entropy or percentile")
    percentile: float = Field(99.999, gt=50, le=100, description="percentile of |activation| kept when "
                                                                 "calibrate_method is percentile, in (50, 100]")
    op_types_to_quantize: list[str] = Field(default_factory=lambda: ["MatMul"], description="op types given QDQ pairs")
    weight_matmuls_only: bool = Field(True, description="quantize only MatMuls with a weight (initializer) input; "
                                                        "false also quantizes attention QK^T and scores x V")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names left in fp32")
    reduce_range: bool = Field(False, description="7-bit weight range: avoids the int16 accumulation saturation of "
                                                  "ORT's u8s8/s8s8 convolution kernels on x86 CPUs without VNNI "
                                                  "(AVX2, pre-Cascade Lake AVX-512); the graph runs the same elsewhere")
    preprocess: bool = Field(True, description="run ORT's quant_pre_process (shape inference + constant folding) "
                                               "first")
    output_margin: float = Field(0.1, ge=0, description="full_integer: widen each output's calibrated range by this "
                                                        "fraction on each side")

    @field_validator("calibrate_method", "activation_type", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v


class StaticInt8Options(FullIntegerOptions):
    """Options of int8-static."""

    owner: ClassVar[str] = "quantize scheme int8-static"
    full_integer: bool = Field(False, description="integer graph I/O (int8_mode full-integer): float outputs get a "
                                                  "calibrated QuantizeLinear (scale in the model metadata); decoders "
                                                  "with a float KV cache raise")


class WindowReader:
    """``CalibrationDataReader`` over token windows: each one a batch-1 prefill with an empty KV cache.

    Feeds are built from the graph's own inputs: ``input_ids``, ``attention_mask`` (ones),
    ``position_ids`` (0..n-1) when the graph has it, and every ``past_key_values.N.key/value`` as
    zeros of shape [1, kv_heads, 0, head_dim] (the two fixed dims read from the input's shape).
    """

    def __init__(self, onnx_path: Path, windows: Sequence[Sequence[int]], config_dir: Path | None = None,
                 model=None) -> None:
        """``model``: the graph at ``onnx_path`` already loaded (its inputs are all that is read)."""
        import onnx
        from onnx import helper

        model = model if model is not None else onnx.load(str(onnx_path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        self.inputs = {}
        for v in model.graph.input:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            self.inputs[v.name] = (helper.tensor_dtype_to_np_dtype(tt.elem_type), dims)
        if "input_ids" not in self.inputs:
            raise ConfigError(f"{onnx_path}: int8-static calibrates token-id graphs (causal LMs and encoders with "
                              f"input_ids); this graph's inputs are {', '.join(self.inputs)}")
        # A graph with a fixed sequence length (static shapes) gets windows padded/cut to it, mask 0 on padding.
        ids_dims = self.inputs["input_ids"][1]
        self.fixed_len = ids_dims[1] if len(ids_dims) == 2 and ids_dims[1] else None
        for name, (dtype, dims) in self.inputs.items():
            if name.startswith("past_key_values") and len(dims) == 4 and dims[1] is not None and dims[3] is None:
                # onnxruntime-genai graphs leave the head size symbolic; their configs say it
                from edgeft.runtime.lm import head_dim_from_config

                dims = [*dims[:3], head_dim_from_config(Path(config_dir or Path(onnx_path).parent), onnx_path)]
                self.inputs[name] = (dtype, dims)
            if name.startswith("past_key_values") and (len(dims) != 4 or dims[1] is None or dims[3] is None):
                raise ConfigError(f"{onnx_path}: KV input {name} has shape {dims}; expected "
                                  "[batch, kv_heads, past, head_dim] with fixed kv_heads and head_dim")
        self.windows = [np.asarray(w, np.int64) for w in windows if len(w) >= 1]
        self._next = 0

    def feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        n = len(ids)
        mask = np.ones(n, np.int64)
        if self.fixed_len is not None:
            ids = np.concatenate([ids[:self.fixed_len], np.zeros(max(self.fixed_len - n, 0), np.int64)])
            mask = (np.arange(self.fixed_len) < n).astype(np.int64)
            n = self.fixed_len
        out = {}
        for name, (dtype, dims) in self.inputs.items():
            if name == "input_ids":
                out[name] = ids[None, :].astype(dtype)
            elif name == "attention_mask":
                out[name] = mask[None, :].astype(dtype)
            elif name == "token_type_ids":
                out[name] = np.zeros((1, n), dtype)
            elif name == "position_ids":
                out[name] = np.arange(n, dtype=dtype)[None, :]
            elif name.startswith("past_key_values"):
                out[name] = np.zeros((1, dims[1], 0, dims[3]), dtype)
            else:
                raise ConfigError(f"int8-static calibration: no feed for graph input {name!r} (known: input_ids, "
                                  "attention_mask, token_type_ids, position_ids, past_key_values.N.key/value)")
        return out

    def get_next(self):
        if self._next >= len(self.windows):
            return None
        self._next += 1
        return self.feeds(self.windows[self._next - 1])

    def rewind(self) -> None:
        self._next = 0


class ImageReader:
    """``CalibrationDataReader`` over preprocessed images (``N x 3 x H x W``), one image per call, fed to the
    graph's single float input (an image classifier's ``pixel_values``)."""

    def __init__(self, onnx_path: Path, images: np.ndarray) -> None:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        names = [v.name for v in model.graph.input if v.name not in inits]
        if len(names) != 1:
            raise ConfigError(f"{onnx_path}: image calibration feeds one input; this graph has {', '.join(names)}")
        self.name, self.windows, self._next = names[0], [np.asarray(x, np.float32) for x in images], 0

    def get_next(self):
        if self._next >= len(self.windows):
            return None
        self._next += 1
        return {self.name: self.windows[self._next - 1][None]}

    def rewind(self) -> None:
        self._next = 0


def _reader(src: Path, calibration):
    """Images (a 4-D float array) or token windows: the matching calibration reader."""
    if isinstance(calibration, np.ndarray) and calibration.ndim == 4:
        return ImageReader(src, calibration)
    return WindowReader(src, calibration)


FLOAT_TYPES = (1, 10, 16, 11)  # TensorProto FLOAT, FLOAT16, BFLOAT16, DOUBLE


def _full_integer_blockers(onnx_path: Path) -> list[str]:
    """Float graph *inputs* (a decoder's past KV cache): a full-integer graph cannot take them.

    Float outputs are not blockers: full-integer mode appends a calibrated QuantizeLinear to each.
    """
    g = _load_graph(onnx_path)
    inits = {i.name for i in g.initializer}
    return [v.name for v in g.input if v.name not in inits and v.type.tensor_type.elem_type in FLOAT_TYPES]


def _quantize_outputs(path: Path, reader: "WindowReader", margin: float = 0.1) -> dict:
    """Make every float graph output int8: QuantizeLinear with a scale/zero point from calibration.

    The ranges are those of the QDQ graph's own outputs on the calibration windows (min/max, the
    range widened to include 0, then by ``margin`` of its width on each side: inputs unlike the
    calibration text would otherwise clip at the range's ends, where a classifier's top logit is). The scale and zero point of each output are written to the
    model's metadata (``edgeft.output_quantization``, JSON) so a consumer can dequantize:
    ``float = (int8 - zero_point) * scale``; argmax (a classifier's label) needs no dequantization.
    """
    import json

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    floats = [o for o in g.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    if not floats:
        return {}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in floats]
    lo = {n: 0.0 for n in names}
    hi = {n: 0.0 for n in names}
    reader.rewind()
    while (feeds := reader.get_next()) is not None:
        for n, v in zip(names, sess.run(names, feeds)):
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    del sess
    info = {}
    for o in floats:
        n = o.name
        width = hi[n] - lo[n]
        lo[n], hi[n] = lo[n] - margin * width, hi[n] + margin * width
        scale = max((hi[n] - lo[n]) / 255.0, 1e-8)
        zp = int(np.clip(round(-128 - lo[n] / scale), -128, 127))
        inner = n + "_float"
        for node in g.node:
            node.output[:] = [inner if x == n else x for x in node.output]
            node.input[:] = [inner if x == n else x for x in node.input]
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), n + "_out_scale"),
                              numpy_helper.from_array(np.array(zp, np.int8), n + "_out_zero_point")])
        g.node.append(helper.make_node("QuantizeLinear", [inner, n + "_out_scale", n + "_out_zero_point"], [n],
                                       name=n + "_QuantizeLinear_output"))
        o.type.tensor_type.elem_type = TensorProto.INT8
        info[n] = {"scale": scale, "zero_point": zp, "dtype": "int8", "calibrated_range": [lo[n], hi[n]]}
    meta = {p.key: p for p in model.metadata_props}
    entry = meta.get("edgeft.output_quantization") or model.metadata_props.add()
    entry.key = "edgeft.output_quantization"
    entry.value = json.dumps({k: {"scale": v["scale"], "zero_point": v["zero_point"]} for k, v in info.items()})
    onnx.save(model, str(path))
    return info


def _load_graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def _onnx_bytes(path: Path) -> int:
    return path.stat().st_size + sum(f.stat().st_size for f in path.parent.iterdir()
                                     if f.is_file() and f.name != path.name and ".onnx" in f.name
                                     and f.name.startswith(path.stem) and f.suffix != ".onnx")


def _feeds_rope(graph, node, depth: int = 4) -> bool:
    """Whether ``node``'s output reaches a Cos/Sin within ``depth`` nodes (the RoPE angle product)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier = list(node.output)
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for c in consumers.get(t, []):
                if c.op_type in ("Cos", "Sin"):
                    return True
                nxt += list(c.output)
        frontier = nxt
    return False


def _auto_exclusions(path: Path, op_types: Sequence[str], weight_matmuls_only: bool) -> dict[str, str]:
    """Nodes kept in fp32 on top of ``nodes_to_exclude``: {node name: reason}.

    - the rotary-embedding MatMul (inv_freq x position): its range is the positions seen in
      calibration, so positions beyond the calibration length would be clipped and RoPE broken
      in long generations;
    - with ``weight_matmuls_only``, every MatMul with no initializer input (attention QK^T and
      scores x V; the LM head too when it multiplies by a computed Transpose of the embedding).
    """
    graph = _load_graph(path)
    inits = {i.name for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type != "MatMul" or "MatMul" not in op_types:
            continue
        has_weight = any(i in inits for i in n.input)
        if not has_weight and _feeds_rope(graph, n):
            out[n.name] = "rotary embedding (position-dependent range)"
        elif weight_matmuls_only and not has_weight:
            out[n.name] = "no weight input (weight_matmuls_only)"
    return out


def apply(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]],
          opts: StaticInt8Options | None = None, **options) -> dict:
    # Over 80 lines: ORT's quantize_static with its options, the preprocess and entropy-calibration steps in one
    # temporary folder, then the report; each step is short and they share the folder, the reader and the timings.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    o = StaticInt8Options.of(opts, **options)
    method, act = o.calibrate_method, o.activation_type
    op_types_to_quantize, nodes_to_exclude, full_integer = o.op_types_to_quantize, o.nodes_to_exclude, o.full_integer
    if calibration is None or not len(calibration):
        raise ConfigError("int8-static needs calibration windows (token ids) or images; none were given")
    in_onnx, out_onnx = Path(in_onnx), Path(out_onnx)
    if full_integer:
        blockers = _full_integer_blockers(in_onnx)
        if blockers:
            shown = ", ".join(blockers[:4]) + (f", +{len(blockers) - 4} more" if len(blockers) > 4 else "")
            raise UnsupportedError(
                "int8-static full_integer is not supported for decoder graphs with a float KV cache: graph inputs "
                f"{shown} are float (the logits output alone could get a QuantizeLinear, as for encoders). Making "
                "the inputs int8 would mean an int8 KV cache fed back "
                "from step to step with fixed calibrated scales, which neither ONNX Runtime's quantize_static "
                "(it keeps float graph I/O) nor edgeft's runtime (OrtLM feeds and reads float KV) supports. "
                "Use full_integer: false (QDQ with float I/O, int8_mode static)")

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))  # ORT logs per tensor at INFO
    # MatMulConstBOnly is ignored by ORT's QDQ quantizer (it only acts in QOperator format), so
    # weight_matmuls_only is applied here through nodes_to_exclude instead.
    extra = {"ActivationSymmetric": o.activation_symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = o.percentile
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    qtypes = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    large = _onnx_bytes(in_onnx) > 1.8 * 2**30  # protobuf's 2 GB limit: weights go to external data
    timings = {}

    with tempfile.TemporaryDirectory(prefix="edgeft-int8-static-") as tmp:
        src = in_onnx
        if o.preprocess:
            # quant_pre_process: symbolic shape inference, ORT basic graph optimizations (constant
            # folding, redundant node elimination), then ONNX shape inference, which the quantizer
            # uses to type the tensors it calibrates. Kept: on the optimum LLaMA graphs the constant
            # folding turns the tied LM head's Transpose(embedding) into a weight, so the LM head gets
            # per-channel int8 weights like every other projection; without it that MatMul has no
            # weight input and is quantized per tensor from a calibrated range (or, with
            # weight_matmuls_only, left in fp32). It also silences ORT's "consider pre-processing" warning.
            from onnxruntime.quantization.shape_inference import quant_pre_process

            t = time.perf_counter()
            src = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(in_onnx), str(src), save_as_external_data=large)
            except Exception as e:  # noqa: BLE001 - ORT raises a bare Exception (e.g. unknown op in shape inference)
                raise ConfigError(f"int8-static: {in_onnx}: ORT's quant_pre_process failed ({e}); set the scheme "
                                  "option preprocess: false") from e
            timings["preprocess_seconds"] = time.perf_counter() - t
        excluded, auto_excluded = list(nodes_to_exclude), {}
        for name, why in _auto_exclusions(src, op_types_to_quantize, o.weight_matmuls_only).items():
            if name not in excluded:
                excluded.append(name)
                auto_excluded[name] = why
        reader = _reader(src, calibration)
        cache = None
        t = time.perf_counter()
        printed = io.StringIO()  # ORT's histogram calibrators print progress to stdout
        if method == "entropy":
            # quantize_static gives the entropy calibrator 128 histogram bins for 128 quantized bins,
            # which leaves it one or two candidate thresholds (about the min/max range): entropy
            # would equal minmax. Calibrate here with a finer histogram and hand the ranges over
            # through quantize_static's calibration cache.
            from onnxruntime.quantization import create_calibrator, save_tensors_data

            calibrator = create_calibrator(src, list(op_types_to_quantize), str(Path(tmp) / "augmented.onnx"),
                                           CalibrationMethod.Entropy, use_external_data_format=large,
                                           extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
            with contextlib.redirect_stdout(printed):
                calibrator.collect_data(reader)
                cache = Path(tmp) / "ranges.json"
                save_tensors_data(calibrator.compute_data(), cache)
            del calibrator
        with contextlib.redirect_stdout(printed):
            quantize_static(str(src), str(out_onnx), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types_to_quantize), per_channel=o.per_channel,
                            activation_type=qtypes[act], weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            use_external_data_format=large, calibrate_method=methods[method], extra_options=extra,
                            reduce_range=o.reduce_range,
                            calibration_cache_path=str(cache) if cache else None)
        if printed.getvalue().strip():
            log.debug("onnxruntime calibration: %s", printed.getvalue().strip())
        timings["calibrate_quantize_seconds"] = time.perf_counter() - t

    outputs_q = {}
    if full_integer:
        if large:
            raise UnsupportedError("int8-static full_integer: graphs over 1.8 GB (external data) are not supported; "
                                   "use full_integer: false")
        outputs_q = _quantize_outputs(out_onnx, reader, o.output_margin)
        timings["quantize_outputs"] = bool(outputs_q)
    nodes = _load_graph(out_onnx).node
    ops = Counter(n.op_type for n in nodes)
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    targets = [n for n in nodes if n.op_type in op_types_to_quantize]
    quantized = [n.name for n in targets if any(i in dq_out for i in n.input)]
    kept = [n.name for n in targets if not any(i in dq_out for i in n.input)]
    return {"per_channel": o.per_channel, "reduce_range": o.reduce_range, "activation_type": act, "activation_symmetric": o.activation_symmetric,
            "calibrate_method": method, **({"percentile": o.percentile} if method == "percentile" else {}),
            **({"entropy_bins": ENTROPY_BINS} if method == "entropy" else {}),
            "op_types_to_quantize": list(op_types_to_quantize), "weight_matmuls_only": o.weight_matmuls_only,
            "nodes_to_exclude": list(nodes_to_exclude), "auto_excluded": auto_excluded,
            "preprocess": o.preprocess, "full_integer": full_integer,
            **({"quantized_outputs": outputs_q, "output_margin": o.output_margin} if full_integer else {}),
            **({"calibration_images": len(reader.windows)} if isinstance(reader, ImageReader) else
               {"calibration_windows": len(reader.windows),
                "calibration_tokens": int(sum(len(w) for w in reader.windows))}),
            "quantize_linear_nodes": ops.get("QuantizeLinear", 0),
            "dequantize_linear_nodes": ops.get("DequantizeLinear", 0),
            "quantized_nodes": len(quantized), "fp32_nodes": len(kept), "fp32_node_names": kept[:20], **timings}


SCHEMES.register("int8-static")(Scheme("int8-static", "ORT static int8 QDQ, activation ranges calibrated on text",
                                       "int8", "static", apply, StaticInt8Options, needs_calibration=True))


def apply_full_integer(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]],
                       opts: FullIntegerOptions | None = None, **options) -> dict:
    o = FullIntegerOptions.of(opts, **options)
    return apply(in_onnx, out_onnx, calibration, StaticInt8Options(**o.model_dump(), full_integer=True))


SCHEMES.register("int8-full-integer")(Scheme(
    "int8-full-integer", "ORT static int8 QDQ with integer graph I/O (encoders/classifiers; int8 outputs)", "int8",
    "full-integer", apply_full_integer, FullIntegerOptions, needs_calibration=True))
