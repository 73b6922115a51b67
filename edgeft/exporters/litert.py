"""LiteRT (.tflite) export of a BERT-family sequence classifier or encoder, for Android and Edge-TPU-style devices.

(A LLaMA-family causal LM goes to :mod:`edgeft.exporters.litert_lm`, litert-torch's generative converter,
with the same presets' ``quantize`` and the causal-LM options below.)

PyTorch -> .tflite goes through ``litert_torch.convert``; int8 through ``ai_edge_quantizer`` (dynamic
range: int8 weights, float activations; full integer: int8 weights and activations calibrated on
training texts, int8 graph inputs and outputs with their scale / zero point recorded). Shapes are
static: one row of ``seq`` tokens (``export.static_shapes``, else 64) and a ``1 x seq`` float mask.

The graph is :class:`EdgeBert`, BERT's forward written out over the model's own modules, so each
Edge-TPU-friendly change is a switch in the preset options (each one's cost is measured against
the unchanged PyTorch model and written to the export report):

- ``embeddings_outside``: token + position + type embeddings are looked up outside the graph; the
  graph input is their float sum (int8 at the input when full-integer) and the table ships beside
  the graph as ``embeddings.safetensors`` (the runtime does the lookup).
- ``gelu: tanh``: the tanh-form GELU from elementary ops (MUL, ADD, LOGISTIC) instead of erf.
- ``layernorm: decomposed``: LayerNorm from mean / sub / mul / rsqrt only (the converter's own
  lowering uses SQUARED_DIFFERENCE).
- ``attention: mul-sum``: per head, the scores as a broadcast MUL of ``[s, 1, d]`` by ``[1, s, d]``
  and a SUM over ``d``, the context as ``[s, s, 1] x [1, s, d]`` summed over keys: no BATCH_MATMUL
  (not on Coral's list) and no tensor with more than 3 non-unit dimensions. Needs batch 1.
- ``linear: conv1x1``: each per-token linear as a 1x1 CONV_2D over ``[1, 1, s, C]`` (Coral maps
  FULLY_CONNECTED only with a one-dimensional output).
- ``softmax: decomposed``: the attention softmax from MAX_POOL_2D (row max), SUB, LOGISTIC, MUL, ADD,
  SUM and a per-row RSQRT, using exp(z) = u / (1 - u) ~ u (1 + u)(1 + u^2)(1 + u^4) for u = sigmoid(z),
  z <= 0 (within 0.4%), and 1/y = rsqrt(y)^2 (Coral maps SOFTMAX
  only on a 1-D input). ``litert-int8-edgetpu`` turns on all of these; ``litert-int8-full`` keeps
  the CPU-friendly ops for phone NPUs and CPUs.
- the attention mask is a static ``1 x seq`` input of 1/0 turned into ``(mask - 1) * -mask_value``
  inside the graph (a bounded additive mask: HF's float32-min mask would leave an int8 activation
  no resolution for the scores).

Parity: the fp32 graph vs the PyTorch module it was converted from (max |logit diff| within the
tolerance, else ParityError); int8 graphs by label agreement (and logit max |diff|) vs the unchanged
fp32 PyTorch model on sample texts, failing below ``min_label_agreement``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence

import numpy as np
from pydantic import Field

from edgeft.artifacts import model_kind, require_hf_folder, size_of
from edgeft.config.loader import check_options
from edgeft.config.options import Options
from edgeft.errors import ConfigError, ParityError, UnsupportedError
from edgeft.exporters.registry import EXPORTERS
from edgeft.fileio import staged_dir
from edgeft.runtime.litert import META_FILE, MODEL_FILE, encode_rows, lookup, require
from edgeft.exporters.parity import check_outputs

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.safetensors"
DEFAULT_SEQ = 64
BERT_TYPES = ("bert",)  # MiniLM checkpoints are BertModel
SAMPLE_TEXTS = ["a gripping , funny film", "dull and lifeless", "it is what it is", "the best of the year",
                "a waste of two hours", "charming , if slight"]





class LiteRTOptions(Options):
    """Preset options of a ``tflite`` preset (``export/litert-*.yaml``)."""

    owner: ClassVar[str] = "tflite export"
    quantize: Literal["none", "dynamic", "full"] = Field(
        "none", description="none (fp32), dynamic (dynamic-range int8 weights) or full (full-integer int8, calibrated)")
    embeddings_outside: bool = Field(False, description="look the token/position/type embeddings up outside the "
                                                        "graph (the table ships beside it); needed for full integer")
    gelu: Literal["erf", "tanh"] = Field("erf", description="GELU form: erf (exact) or tanh (Edge TPU friendly)")
    layernorm: Literal["native", "decomposed"] = Field(
        "native", description="LayerNorm as the converter writes it, or decomposed into mean/sub/mul/rsqrt")
    attention: Literal["matmul", "mul-sum"] = Field(
        "matmul", description="attention scores and context as BATCH_MATMUL (matmul), or per head as broadcast "
                              "MUL + SUM with at most 3 non-unit dims (mul-sum: every op on the Edge TPU list)")
    linear: Literal["fc", "conv1x1"] = Field(
        "fc", description="per-token linear layers as FULLY_CONNECTED over the sequence (fc), or as a 1x1 CONV_2D "
                          "over a [1, 1, seq, C] tensor (conv1x1: the Edge TPU maps FULLY_CONNECTED only with a "
                          "one-dimensional output)")
    softmax: Literal["native", "decomposed"] = Field(
        "native", description="attention softmax as SOFTMAX (native), or from MAX_POOL_2D, LOGISTIC, MUL, ADD, SUM "
                              "and a per-row RSQRT (decomposed: the Edge TPU maps SOFTMAX only on a 1-D input)")
    mask_value: float = Field(-30.0, lt=0, description="additive attention-mask value for padded positions")
    embeddings_dtype: Literal["float16", "float32"] = Field("float16", description="dtype of the outside-graph "
                                                                                   "embedding table")
    tolerance: Optional[float] = Field(None, description="fp32 parity tolerance; None: the export tolerance")
    min_label_agreement: float = Field(0.9, ge=0, le=1, description="int8 graphs: fail below this label agreement "
                                                                    "with the fp32 PyTorch model on the sample texts")
    calibration_examples: int = Field(128, gt=0, description="training texts for full-integer calibration")
    algorithm: str = Field("min_max_uniform_quantize", description="ai-edge-quantizer AlgorithmName value for the "
                                                                   "int8 recipes")
    calibration_update: Literal["min_max", "moving_average"] = Field(
        "min_max", description="how per-row ranges merge: min_max, or the library's moving_average")
    # causal LMs (litert-torch's generative converter; see edgeft.exporters.litert_lm)
    weight_bits: Literal[8, 4] = Field(8, description="causal LM, quantize: dynamic: int8 or int4 weights")
    block_size: Literal[32, 128] = Field(32, description="causal LM, weight_bits 4: input channels per int4 scale")
    prefill_seq_len: int = Field(64, gt=0, description="causal LM: tokens per prefill call (the prefill "
                                                        "signature's static length; prompts run in chunks)")
    kv_cache_max_len: int = Field(512, gt=1, description="causal LM: tokens the KV cache holds (prompt + output)")
    min_top1_agreement: float = Field(0.8, ge=0, le=1, description="causal LM, quantized: fail below this top-1 "
                                                                   "agreement with fp32 on the held-out windows")
    max_ppl_increase_pct: float = Field(25.0, description="causal LM: fail when held-out perplexity rises more "
                                                          "than this (percent)")

    @classmethod
    def parse(cls, options: dict, where: str) -> "LiteRTOptions":
        """Validated options; the algorithm name is checked against the installed ai-edge-quantizer."""
        o = check_options(cls, dict(options), where, "options", cls.owner)
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        algos = [a.value for a in AlgorithmName]
        if o.algorithm not in algos:
            raise ConfigError(f"{where}: options.algorithm is {o.algorithm!r}; one of {', '.join(algos)}")
        return o

    @property
    def precision(self) -> str:
        if self.quantize == "none":
            return "fp32"
        return "int4" if self.quantize == "dynamic" and self.weight_bits == 4 else "int8"

    @property
    def int8_mode(self) -> str | None:
        return {"none": None, "dynamic": "dynamic", "full": "full-integer"}[self.quantize]


# --------------------------------------------------------------------------- the graph


def _edge_bert_class():
    # Over 80 lines: it builds the module class inside a function so torch is imported only when a LiteRT export runs;
    # the class is the BERT forward pass written op by op for the Edge TPU.
    import torch
    from torch import nn

    def layer_norm(ln: nn.LayerNorm, x, decomposed: bool):
        if not decomposed:
            return ln(x)
        mu = x.mean(-1, keepdim=True)
        d = x - mu
        return d * torch.rsqrt((d * d).mean(-1, keepdim=True) + ln.eps) * ln.weight + ln.bias

    def gelu(x, form: str):
        if form == "erf":
            return torch.nn.functional.gelu(x)
        # tanh form 0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3), written as x * sigmoid(2 z) (the
        # same function): the converter fuses the literal tanh spelling back into one GELU op
        return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))

    def linear(lin: nn.Linear, x, form: str):
        """``lin`` on [1, s, C]: as itself, or as a 1x1 convolution over [1, C, 1, s] (NHWC [1, 1, s, C] in the graph)."""
        if form == "fc":
            return lin(x)
        b, s, c = x.shape
        y = torch.nn.functional.conv2d(x.reshape(b, 1, s, c).permute(0, 3, 1, 2), lin.weight[:, :, None, None],
                                       lin.bias)
        return y.permute(0, 2, 3, 1).reshape(b, s, -1)

    def softmax(x, form: str):
        """Softmax over the last dim. decomposed: exp(z) for z = x - max(x) <= 0 from u = sigmoid(z) <= 1/2 as
        u / (1 - u) ~ u (1 + u)(1 + u^2)(1 + u^4), which is exp(z) (1 - u^8): 0.4% low at z = 0, 3e-5 at z = -1;
        and the row's 1/y as rsqrt(y)^2. Only MAX_POOL_2D, SUB, LOGISTIC, MUL, ADD, SUM and a per-row RSQRT
        appear (all on the Edge TPU list). No per-element RSQRT: TFLite's int8 RSQRT kernel costs ~60 ns an
        element on a CPU, three times the rest of MiniLM's graph at 12 x 64 x 64 scores a layer (docs/benchmarks.md)."""
        if form == "native":
            return x.softmax(-1)
        n = x.shape[-1]  # the row max as a 1 x n MAX_POOL_2D (REDUCE_MAX has no int8 kernel in ai-edge-quantizer)
        m = torch.nn.functional.max_pool2d(x.reshape(1, 1, -1, n), kernel_size=(1, n)).reshape(*x.shape[:-1], 1)
        u = torch.sigmoid(x - m)
        u2 = u * u
        e = u * (1.0 + u) * (1.0 + u2) * (1.0 + u2 * u2)
        t = torch.rsqrt(e.sum(-1, keepdim=True))
        return e * (t * t)

    def mul_sum_attention(q, k, v, ext, nh: int, softmax_form: str = "native"):
        """Attention of one row (batch 1) per head from broadcast MUL and SUM only (q already scaled).

        ``q, k, v``: [1, s, nh * d]; ``ext``: the additive mask [1, 1, 1, s]. Every tensor keeps at
        most 3 non-unit dimensions ([s, s, d] is the largest), as the Edge TPU requires.
        """
        _, s, width = q.shape
        d = width // nh
        mask = ext.reshape(1, s)
        outs = []
        for qh, kh, vh in zip(q.split(d, -1), k.split(d, -1), v.split(d, -1)):
            scores = (qh.reshape(s, 1, d) * kh.reshape(1, s, d)).sum(-1) + mask  # [s, s]
            p = softmax(scores, softmax_form)
            outs.append((p.reshape(s, s, 1) * vh.reshape(1, s, d)).sum(1))  # [s, d]
        return torch.cat(outs, -1).reshape(1, s, width)

    class EdgeBert(nn.Module):
        """BERT's forward over an HF BERT model's own modules, with the surgery switches of :class:`LiteRTOptions`.

        Written out (not ``model(...)``) because the HF forward builds a float32-min additive mask and
        calls fused attention, neither of which a static int8 graph can carry.
        """

        def __init__(self, model, opts: LiteRTOptions) -> None:
            super().__init__()
            self.classifier_model = model if hasattr(model, "classifier") else None
            self.bert = model.bert if hasattr(model, "bert") else model
            self.opts = opts

        def embed(self, input_ids):
            e = self.bert.embeddings
            pos = torch.arange(input_ids.shape[1])
            return (e.word_embeddings(input_ids) + e.position_embeddings(pos)[None]
                    + e.token_type_embeddings(torch.zeros_like(input_ids)))

        def forward(self, x, attention_mask):
            o = self.opts
            dec = o.layernorm == "decomposed"
            emb = x if o.embeddings_outside else self.embed(x)
            h = layer_norm(self.bert.embeddings.LayerNorm, emb, dec)
            ext = (1.0 - attention_mask)[:, None, None, :] * o.mask_value
            for layer in self.bert.encoder.layer:
                a = layer.attention.self
                b, s, _ = h.shape
                nh, hd = a.num_attention_heads, a.attention_head_size

                def heads(t):
                    return t.view(b, s, nh, hd).transpose(1, 2)

                lf = o.linear
                q, k, v = linear(a.query, h, lf), linear(a.key, h, lf), linear(a.value, h, lf)
                if o.attention == "mul-sum":
                    ctx = mul_sum_attention(q * (hd ** -0.5), k, v, ext, nh, o.softmax)
                else:
                    q, k, v = heads(q), heads(k), heads(v)
                    scores = torch.matmul(q, k.transpose(-1, -2)) * (hd ** -0.5) + ext
                    ctx = torch.matmul(softmax(scores, o.softmax), v).transpose(1, 2).reshape(b, s, nh * hd)
                h = layer_norm(layer.attention.output.LayerNorm, linear(layer.attention.output.dense, ctx, lf) + h, dec)
                inner = gelu(linear(layer.intermediate.dense, h, lf), o.gelu)
                h = layer_norm(layer.output.LayerNorm, linear(layer.output.dense, inner, lf) + h, dec)
            if self.classifier_model is None:
                return h  # encoder: last hidden state; the runtime mean-pools it under the mask
            pooled = torch.tanh(self.bert.pooler.dense(h[:, 0]))
            return self.classifier_model.classifier(pooled)

    return EdgeBert


def edge_module(model, opts: LiteRTOptions):
    """The module the LiteRT export converts, over an HF BERT model's own modules (``model``: a classifier,
    an encoder, or a PEFT model over one), with the surgery switches of ``opts``."""
    return _edge_bert_class()(model, opts)


def load_module(model_dir: Path, opts: LiteRTOptions):
    """(EdgeBert over the model in ``model_dir``, the unchanged HF model, task) for a BERT-family folder."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(str(model_dir))
    if cfg.model_type not in BERT_TYPES:
        raise UnsupportedError(f"{model_dir}: LiteRT export covers BERT-family encoders ({', '.join(BERT_TYPES)}) "
                               f"and LLaMA-family causal LMs; "
                               f"model type {cfg.model_type!r} is not one; use an ONNX preset")
    classifier = model_kind(model_dir) == "classifier"
    cls = AutoModelForSequenceClassification if classifier else AutoModel
    hf = cls.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    if classifier and getattr(hf.bert, "pooler", None) is None:
        raise UnsupportedError(f"{model_dir}: the classifier has no pooler; LiteRT export expects BERT's pooled head")
    return _edge_bert_class()(hf, opts).eval(), hf, ("classifier" if classifier else "encoder")


# --------------------------------------------------------------------------- inputs


def embedding_table(edge) -> dict[str, np.ndarray]:
    """The outside-graph lookup: ``word`` [vocab, hidden] and ``position_type`` [max_pos, hidden] (type 0 added)."""
    e = edge.bert.embeddings
    word = e.word_embeddings.weight.detach().float().numpy()
    pos = e.position_embeddings.weight.detach().float().numpy() + e.token_type_embeddings.weight[0].detach().numpy()
    return {"word": word, "position_type": pos}


def graph_inputs(edge, opts: LiteRTOptions, ids: np.ndarray, mask: np.ndarray, table=None) -> list[np.ndarray]:
    """The graph's two inputs for rows of token ids: ids (or their embedding sum) and the float mask."""
    if opts.embeddings_outside:
        return [lookup(table if table is not None else embedding_table(edge), ids), mask]
    return [ids, mask]


def module_outputs(module, xs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-by-row outputs of a PyTorch module taking (x, mask), batch 1 each (as the graph runs)."""
    import torch

    with torch.inference_mode():
        return np.concatenate([module(torch.as_tensor(xs[i:i + 1]), torch.as_tensor(mask[i:i + 1])).numpy()
                               for i in range(len(xs))])


def hf_outputs(hf, task: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The unchanged HF model on the same padded rows: logits, or the last hidden state for an encoder."""
    import torch

    with torch.inference_mode():
        out = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask).long())
    return (out.logits if task == "classifier" else out.last_hidden_state).float().numpy()


# --------------------------------------------------------------------------- conversion and quantization


def convert(edge, opts: LiteRTOptions, seq: int, path: Path) -> float:
    """``litert_torch.convert`` of ``edge`` at [1, seq] and ``export`` to ``path``; returns seconds."""
    import torch

    import litert_torch

    hidden = edge.bert.config.hidden_size
    x = torch.zeros(1, seq, hidden) if opts.embeddings_outside else torch.zeros(1, seq, dtype=torch.int32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model = litert_torch.convert(edge, sample_kwargs={"x": x, "attention_mask": torch.ones(1, seq)})
    model.export(str(path))
    return time.perf_counter() - t0


def quantize(float_path: Path, out_path: Path, opts: LiteRTOptions, calibration: list[list[np.ndarray]]) -> dict:
    """ai_edge_quantizer on the float graph: dynamic-range int8, or full integer calibrated on ``calibration``."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(str(float_path))
    algo = AlgorithmName(opts.algorithm)
    t0 = time.perf_counter()
    if opts.quantize == "dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32(algorithm_key=algo))
        result = q.quantize()
    else:
        q.load_quantization_recipe(recipe.static_wi8_ai8(algorithm_key=algo))
        sigs = Interpreter(str(float_path)).get_signature_list()
        key = next(iter(sigs))
        names = sigs[key]["inputs"]
        order = sorted(names, key=lambda n: n != "x")  # [x, attention_mask]
        data = {key: [{n: row[order.index(n)] for n in names} for row in calibration]}
        result = q.quantize(_calibrate(float_path, data, opts))
    result.export_model(str(out_path), overwrite=True)
    recipe_name = "dynamic_wi8_afp32" if opts.quantize == "dynamic" else "static_wi8_ai8"
    return {"recipe": recipe_name, "algorithm": opts.algorithm, "calibration_update": opts.calibration_update,
            "seconds": time.perf_counter() - t0, "calibration_rows": len(calibration)}


def _calibrate(float_path: Path, data: dict, opts: LiteRTOptions) -> dict:
    """Activation ranges of the float graph over ``data``, merged per ``options.calibration_update``.

    ``Quantizer.calibrate`` always merges the per-row ranges with a 0.95 moving average, which for
    one-row calibration steps shrinks every range toward the typical row (MiniLM's logits were
    clipped to a third of their range); ``min_max`` keeps the true extremes over all rows. The
    quantizer's own ``Calibrator`` and ``qsv_utils`` do the work; only the merge function is chosen.
    """
    from ai_edge_quantizer import calibrator, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import qsv_utils

    merge = {"min_max": qsv_utils.min_max_update, "moving_average": qsv_utils.moving_average_update}
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.static_wi8_ai8(algorithm_key=AlgorithmName(opts.algorithm)))
    calib = calibrator.Calibrator(Path(float_path).read_bytes(), num_threads=2,
                                  qsv_update_func=merge[opts.calibration_update])
    calib.calibrate(data, manager)
    return calib.get_model_qsvs()


def graph_info(path: Path) -> dict:
    """What a device checker looks at: op types and counts, input/output dtypes, shapes and quantization,
    and the float tensors flowing between ops (none in a full-integer graph)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    ops = it._get_ops_details()  # the interpreter's op list (name + tensor indices); no public equivalent
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    counts: dict[str, int] = {}
    float_ops = set()
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        for i in list(op["inputs"]) + list(op["outputs"]):
            t = tensors.get(int(i))
            if t is not None and np.dtype(t["dtype"]) == np.float32:
                float_ops.add(op["op_name"])

    def io(d):
        scale, zero = d["quantization"]
        return {"name": d["name"], "shape": [int(v) for v in d["shape"]],
                "shape_signature": [int(v) for v in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return {"ops": dict(sorted(counts.items())), "op_count": len(ops), "float_ops": sorted(float_ops),
            "inputs": [io(d) for d in it.get_input_details()], "outputs": [io(d) for d in it.get_output_details()]}


# --------------------------------------------------------------------------- parity


def _agreement(ref: np.ndarray, got: np.ndarray, task: str, mask: np.ndarray) -> dict:
    if task == "classifier":
        return {"label_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
                "max_abs_diff": float(np.abs(ref - got).max())}
    m = mask[..., None]
    pa, pb = [(h * m).sum(1) / np.maximum(m.sum(1), 1) for h in (ref, got)]
    cos = (pa * pb).sum(1) / np.maximum(np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1), 1e-12)
    return {"embedding_cosine": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
            "max_abs_diff": float(np.abs((ref - got) * m).max())}


def surgery_cost(edge, hf, task: str, inputs: list[np.ndarray], ids: np.ndarray, mask: np.ndarray) -> dict:
    """The PyTorch module with the surgery switches vs the unchanged HF model (the accuracy cost of the switches)."""
    ref = hf_outputs(hf, task, ids, mask)
    got = module_outputs(edge, *inputs)
    return {**_agreement(ref, got, task, mask), "samples": len(ids)}


# --------------------------------------------------------------------------- export


@EXPORTERS.register("tflite", options=LiteRTOptions)
def export_preset(model_dir: Path, out_dir: Path, preset, tolerance: float = 2e-3,
                  sample_texts: Sequence[str] | None = None, calibration_texts: Sequence[str] | None = None,
                  static_shapes=None, sample_ids=None, quality_ids=None, **_) -> dict:
    """Export ``model_dir`` with a ``tflite`` preset into ``out_dir`` (written to a temp folder, then renamed)."""
    opts = LiteRTOptions.parse(dict(preset.options), f"export/{preset.name}.yaml")
    return export_litert(model_dir, out_dir, opts, tolerance=tolerance, sample_texts=sample_texts,
                         calibration_texts=calibration_texts, static_shapes=static_shapes, preset_name=preset.name,
                         sample_ids=sample_ids, quality_ids=quality_ids)


def export_litert(model_dir: Path, out_dir: Path, opts: LiteRTOptions, tolerance: float = 2e-3,
                  sample_texts: Sequence[str] | None = None, calibration_texts: Sequence[str] | None = None,
                  static_shapes=None, preset_name: str = "litert", sample_ids=None, quality_ids=None) -> dict:
    require()
    from transformers import AutoTokenizer

    model_dir, out_dir = require_hf_folder(model_dir), Path(out_dir)
    if model_kind(model_dir) == "causal-lm":
        from edgeft.exporters.litert_lm import export_lm

        if static_shapes is not None:
            raise ConfigError("export.static_shapes applies to encoders/classifiers; a LiteRT causal LM takes "
                              "prompts up to options.kv_cache_max_len in prefill_seq_len chunks")
        return export_lm(model_dir, out_dir, opts, tolerance, sample_ids, quality_ids, preset_name)
    if static_shapes is not None and static_shapes.batch != 1:
        raise ConfigError(f"export.static_shapes.batch is {static_shapes.batch}; LiteRT graphs run one row (batch 1)")
    seq = static_shapes.seq if static_shapes is not None else DEFAULT_SEQ
    if opts.quantize == "full" and not calibration_texts:
        raise ConfigError(f"{preset_name}: full-integer quantization needs calibration texts (the training split)")
    texts = list(sample_texts or SAMPLE_TEXTS)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    edge, hf, task = load_module(model_dir, opts)
    positions = edge.bert.config.max_position_embeddings
    if seq > positions:
        raise ConfigError(f"export.static_shapes.seq {seq} exceeds the model's {positions} positions")
    table = embedding_table(edge) if opts.embeddings_outside else None
    ids, mask = encode_rows(tok, texts, seq)
    inputs = graph_inputs(edge, opts, ids, mask, table)

    with staged_dir(out_dir) as tmp:  # a failed export leaves nothing behind
        report = _build(tmp, model_dir, opts, tok, edge, hf, task, table, ids, mask, inputs, seq, tolerance,
                        calibration_texts, preset_name)
    log.info("export %s: %s tflite, seq %d, %.1f MB, vs fp32 PyTorch %s", preset_name, opts.int8_mode or "fp32", seq,
             report["size_bytes"] / 2**20, report["vs_reference"])
    return report


def _build(tmp: Path, model_dir: Path, opts: LiteRTOptions, tok, edge, hf, task: str, table, ids, mask, inputs,
           seq: int, tolerance: float, calibration_texts, preset_name: str) -> dict:
    """Convert, quantize, check and write the bundle into ``tmp``; returns the export report."""
    texts_n = len(ids)
    float_path = tmp / (MODEL_FILE if opts.quantize == "none" else "model.float.tflite")
    seconds = convert(edge, opts, seq, float_path)
    report = {"format": "tflite", "preset": preset_name, "task": task, "options": opts.model_dump(), "seq": seq,
              "batch": 1, "export_seconds": seconds, "samples": texts_n,
              "surgery": surgery_cost(edge, hf, task, inputs, ids, mask)}
    ref_fp32 = hf_outputs(hf, task, ids, mask)
    from edgeft.runtime.litert import LiteRTModel

    if opts.quantize == "none":
        tol = opts.tolerance if opts.tolerance is not None else tolerance
        got = LiteRTModel(float_path, threads=1, table=table).run(*inputs)
        want = module_outputs(edge, *inputs)
        report["parity"] = [c.to_dict() for c in check_outputs(f"export {preset_name} (tflite vs PyTorch)",
                                                               {_out_name(task): want}, {_out_name(task): got}, tol)]
        report["tolerance"] = tol
        report["vs_reference"] = {**_agreement(ref_fp32, got, task, mask), "samples": texts_n}
    else:
        calib = []
        if opts.quantize == "full":
            c_ids, c_mask = encode_rows(tok, list(calibration_texts)[:opts.calibration_examples], seq)
            calib = [[a[i:i + 1] for a in graph_inputs(edge, opts, c_ids, c_mask, table)] for i in range(len(c_ids))]
        report["quantization"] = quantize(float_path, tmp / MODEL_FILE, opts, calib)
        float_path.unlink()
        got = LiteRTModel(tmp / MODEL_FILE, threads=1, table=table).run(*inputs)
        report["vs_reference"] = {**_agreement(ref_fp32, got, task, mask), "samples": texts_n}
    info = graph_info(tmp / MODEL_FILE)
    report["graph"] = info
    _check_graph(info, opts, seq, preset_name)
    _check_quality(report["vs_reference"], task, opts, preset_name)
    _write_bundle(tmp, model_dir, tok, table, opts, task, seq, info)
    report["size_bytes"] = size_of(tmp, "tflite")
    (tmp / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def _out_name(task: str) -> str:
    return "logits" if task == "classifier" else "last_hidden_state"


def _check_graph(info: dict, opts: LiteRTOptions, seq: int, name: str) -> None:
    """Static shapes everywhere; a full-integer graph has int8 inputs/outputs and no float tensor between ops."""
    for d in info["inputs"] + info["outputs"]:
        if any(v < 1 for v in d["shape_signature"]):
            raise ParityError(f"export {name}: tensor {d['name']} has a dynamic shape {d['shape_signature']}")
    if opts.quantize == "full":
        bad = [d["name"] for d in info["inputs"] + info["outputs"] if d["dtype"] != "int8"
               and not (d["dtype"] == "int32" and not opts.embeddings_outside and d is info["inputs"][0])]
        if bad or info["float_ops"]:
            hint = ("; ai-edge-quantizer keeps the in-graph embedding lookup float: set options.embeddings_outside: "
                    "true" if "EMBEDDING_LOOKUP" in info["float_ops"] or "GATHER" in info["float_ops"] else "")
            raise ParityError(f"export {name}: the full-integer graph is not all int8 (float I/O: {bad or 'none'}; "
                              f"ops with float tensors: {', '.join(info['float_ops']) or 'none'}){hint}")


def _check_quality(vs: dict, task: str, opts: LiteRTOptions, name: str) -> None:
    if opts.quantize == "none":
        return
    if task == "classifier" and vs["label_agreement"] < opts.min_label_agreement:
        raise ParityError(f"export {name}: label agreement with the fp32 PyTorch model is {vs['label_agreement']:.3f} "
                          f"on {vs.get('samples')} texts, below options.min_label_agreement {opts.min_label_agreement}")
    if task == "encoder" and vs["embedding_cosine"] < opts.min_label_agreement:
        raise ParityError(f"export {name}: mean embedding cosine with the fp32 PyTorch model is "
                          f"{vs['embedding_cosine']:.3f}, below options.min_label_agreement {opts.min_label_agreement}")


def _write_bundle(tmp: Path, model_dir: Path, tok, table, opts: LiteRTOptions, task: str, seq: int,
                  info: dict) -> None:
    """Tokenizer, config, the outside-graph embedding table and ``litert.json`` (what the runtime reads)."""
    tok.save_pretrained(str(tmp))
    shutil.copy2(model_dir / "config.json", tmp / "config.json")
    if table is not None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v.astype(opts.embeddings_dtype)) for k, v in table.items()},
                  str(tmp / EMBEDDINGS_FILE))
    meta = {"task": task, "seq": seq, "batch": 1, "input": "embeddings" if opts.embeddings_outside else "input_ids",
            "embeddings_file": EMBEDDINGS_FILE if table is not None else None, "precision": opts.precision,
            "int8_mode": opts.int8_mode, "inputs": info["inputs"], "outputs": info["outputs"]}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
