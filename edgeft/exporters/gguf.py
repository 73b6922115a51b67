"""GGUF export (llama.cpp) of LLaMA-family models.

Conversion is edgeft's, written with the ``gguf`` package: tensor names, the Q/K row permutation and
the tokenizer metadata follow llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM`` (that
script is not installable as a library; the ``gguf`` package ships its writer and name constants).

Quantization is llama.cpp's own quantizer, ``llama_model_quantize`` from llama-cpp-python, whenever
it is installed: edgeft writes an F32 GGUF and llama.cpp quantizes it to the preset's ``qtype``, with
its per-tensor mixes (Q4_K_M keeps some attn_v/ffn_down in Q6_K; rows whose length is not a multiple
of 256, the 576-wide ones of SmolLM2, fall back to a 32-block type) and every k-quant and IQ type.
With calibration windows (recipes take them from the training split) edgeft computes the importance
matrix llama.cpp's ``llama-imatrix`` tool would (the mean of x² per input column of every linear
layer, from PyTorch forward hooks) and hands it to the quantizer through the bindings' ``imatrix``
field. Without llama-cpp-python the ``gguf`` package's numpy quantizers (``gguf.quants``) write the
types they implement (Q8_0, Q5_x, Q4_x), the token embedding / tied LM head in Q8_0 for 4/5-bit
bodies, as llama.cpp keeps it; k-quant and IQ types then fail with the install line.

Validation: when llama-cpp-python is installed the file is loaded and scored against the fp32
model (perplexity, top-1 agreement; :func:`edgeft.metrics.lm.quality_vs_reference`);
otherwise the report says the check was skipped and why.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import ClassVar, Literal, Sequence, Union, get_args

import numpy as np
from pydantic import Field, field_validator

from edgeft.artifacts import require_hf_folder, size_of
from edgeft.config.options import Options
from edgeft.errors import ConfigError, ModelSourceError, UnsupportedError, optional_import
from edgeft.exporters.registry import EXPORTERS

log = logging.getLogger(__name__)

QType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1",
                "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS",
                "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"]
QTYPES = get_args(QType)
# What the gguf package's numpy quantizers write (the fallback without llama-cpp-python).
GGUF_PY_QTYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
# File types whose tensors llama.cpp refuses to quantize without an importance matrix (llama-quant.cpp's
# tensor_requires_imatrix: the IQ1/IQ2/IQ3_XXS grids, and Q2_K inside a Q2_K_S file).
NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_M", "IQ1_S", "Q2_K_S")


class GgufOptions(Options):
    """Options of gguf presets."""

    owner: ClassVar[str] = "gguf export"
    qtype: QType = Field("Q8_0", description="llama.cpp file type (LLAMA_FTYPE_MOSTLY_*): " + ", ".join(QTYPES))
    embedding_qtype: Union[Literal["auto"], QType] = Field(
        "auto", description="token embedding / LM head tensor type (auto: llama.cpp's own choice for the file "
                            "type; with the gguf-py quantizer Q8_0 for 4/5-bit bodies, else qtype)")
    quantizer: Literal["auto", "llama.cpp", "gguf-py"] = Field(
        "auto", description="auto: llama.cpp's llama_model_quantize when llama-cpp-python is installed, else the "
                            "gguf package's numpy quantizers (Q8_0, Q5_x, Q4_x only)")
    imatrix: bool = Field(True, description="compute an importance matrix from the calibration windows and give it "
                                            "to llama.cpp's quantizer (ignored for F32/F16/BF16/Q8_0)")
    threads: int = Field(2, ge=1, description="llama.cpp quantizer threads")
    tokenizer_pre: str = Field("auto", description="llama.cpp pre-tokenizer name (auto: read from tokenizer.json)")
    min_top1_agreement: float = Field(0.80, ge=0, description="fail below this top-1 agreement with the fp32 model")
    max_ppl_increase_pct: float = Field(25.0, description="fail when perplexity rises more than this vs the fp32 "
                                                          "model")

    @field_validator("qtype", "embedding_qtype", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) and v.lower() != "auto" else v

    @property
    def precision(self) -> str:
        return precision_of(self.qtype)

    @property
    def int8_mode(self) -> str | None:
        return "weight-only" if self.precision == "int8" else None


_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q5_1": "MOSTLY_Q5_1",
               "Q5_0": "MOSTLY_Q5_0", "Q4_1": "MOSTLY_Q4_1", "Q4_0": "MOSTLY_Q4_0"}


def precision_of(qtype: str) -> str:
    """Device-check precision of a GGUF file type: block formats below 8 bits (Q6_K down to IQ1) need the same
    sub-byte kernels as int4 weights, so they count as int4."""
    return {"F32": "fp32", "F16": "fp16", "BF16": "fp16", "Q8_0": "int8"}.get(qtype, "int4")

# HF parameter name (inside model.layers.N.) -> GGUF name (inside blk.N.), per convert_hf_to_gguf.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _import_gguf():
    return optional_import("gguf", "GGUF export needs the gguf package: pip install gguf")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved RoPE layout (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for the split rules in tokenizer.json (the ones edgeft meets)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre.get("type")]
    if kinds == ["Digits", "ByteLevel"] and pre["pretokenizers"][0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    raise UnsupportedError(f"GGUF export: no llama.cpp pre-tokenizer known for pre_tokenizer {kinds}; set the "
                           "preset option tokenizer_pre (a name from llama.cpp's convert_hf_to_gguf.py)")


def _add_tokenizer(writer, gguf, model_dir: Path, vocab_size: int, pre: str) -> None:
    """BPE vocabulary, token types, merges and special ids, as convert_hf_to_gguf's get_vocab_base/_set_vocab_gpt2."""
    from transformers import AutoTokenizer

    tj_path = model_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise ModelSourceError(f"{model_dir}: no tokenizer.json; GGUF export needs the HF tokenizer next to the weights")
    tj = json.loads(tj_path.read_text())
    if (tj.get("model") or {}).get("type") != "BPE":
        raise UnsupportedError(f"GGUF export: tokenizer model {(tj.get('model') or {}).get('type')!r} is not handled "
                               "(only byte-level BPE); convert with llama.cpp's convert_hf_to_gguf.py instead")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tj) if pre == "auto" else pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(str(model_dir), load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)


def _quantize(gguf, name: str, w: np.ndarray, qtype: str) -> tuple[np.ndarray, object]:
    q = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32" or w.ndim < 2:
        return w.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[q][0]
    if w.shape[-1] % block:
        log.info("gguf: %s row length %d is not a multiple of %d; stored as F16", name, w.shape[-1], block)
        return w.astype(np.float16), gguf.GGMLQuantizationType.F16
    if qtype == "F16":
        return w.astype(np.float16), q
    return gguf.quants.quantize(w.astype(np.float32), q), q


def write_gguf(model_dir: Path, out_file: Path, qtype: str = "Q8_0", embedding_qtype: str = "auto",
               tokenizer_pre: str = "auto") -> dict:
    """Write ``out_file`` from the HF LLaMA-family folder ``model_dir`` with the gguf package's quantizers (the
    types in :data:`GGUF_PY_QTYPES`); returns what was written. :func:`export_gguf` writes F32 here and hands
    the file to llama.cpp's quantizer when it is installed."""
    # Over 80 lines: the GGUF file is written in one pass: metadata, tokenizer, then every tensor with its llama.cpp
    # name and type, through one gguf writer.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = _import_gguf()
    if qtype not in GGUF_PY_QTYPES:
        raise UnsupportedError(f"gguf option qtype={qtype!r}: the gguf package's quantizers write "
                               f"{', '.join(GGUF_PY_QTYPES)}; {qtype} needs llama.cpp's quantizer: "
                               "pip install 'edgeft[bench]' (llama-cpp-python)")
    if embedding_qtype == "auto":
        embedding_qtype = "Q8_0" if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1") else qtype
    if embedding_qtype not in GGUF_PY_QTYPES:
        raise UnsupportedError(f"gguf option embedding_qtype={embedding_qtype!r}: the gguf package's quantizers "
                               f"write {', '.join(GGUF_PY_QTYPES)}; use auto or install llama-cpp-python")
    cfg = AutoConfig.from_pretrained(str(model_dir))
    if cfg.model_type not in ("llama",) or "LlamaForCausalLM" not in (cfg.architectures or ["LlamaForCausalLM"]):
        raise UnsupportedError(f"GGUF export handles LlamaForCausalLM (model_type llama); {model_dir} is "
                               f"{cfg.model_type} {cfg.architectures}: use llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "rope_scaling", None):
        raise UnsupportedError(f"GGUF export: rope_scaling {cfg.rope_scaling} is not written by edgeft; use "
                               "llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedError("GGUF export: attention/MLP biases are not written by edgeft; use convert_hf_to_gguf.py")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    tied = bool(getattr(cfg, "tie_word_embeddings", False))

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(model_dir.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(getattr(cfg, "rope_theta", 10000.0))
    w.add_vocab_size(cfg.vocab_size)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[qtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(w, gguf, model_dir, cfg.vocab_size, tokenizer_pre)

    written: dict[str, dict] = {}

    def put(name: str, arr: np.ndarray, qt: str) -> None:
        data, q = _quantize(gguf, name, arr, qt)
        if q in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=q)
        written[name] = {"shape": list(arr.shape), "type": q.name}

    put("token_embd.weight", state["model.embed_tokens.weight"], embedding_qtype)
    for i in range(cfg.num_hidden_layers):
        for hf, gg in _LAYER_NAMES.items():
            arr = state[f"model.layers.{i}.{hf}"]
            if hf == "self_attn.q_proj.weight":
                arr = permute_qk(arr, n_head)
            elif hf == "self_attn.k_proj.weight":
                arr = permute_qk(arr, n_kv)
            put(f"blk.{i}.{gg}", arr, "F32" if arr.ndim == 1 else qtype)
    put("output_norm.weight", state["model.norm.weight"], "F32")
    if not tied:
        put("output.weight", state["lm_head.weight"], embedding_qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out_file)
    return {"tensors": len(written), "qtype": qtype, "embedding_qtype": embedding_qtype, "tied_lm_head": tied,
            "types": sorted({t["type"] for t in written.values()})}


def _llama_cpp():
    return optional_import("llama_cpp", "llama.cpp's quantizer needs llama-cpp-python: pip install 'edgeft[bench]'")


def importance_matrix(model_dir: Path, windows: Sequence[Sequence[int]]) -> tuple[dict[str, np.ndarray], int]:
    """llama-imatrix's statistic from PyTorch: for every linear layer, the mean over calibration tokens of x_j^2
    per input column j, under the layer's GGUF tensor name. The Q/K row permutation reorders outputs, not
    inputs, so the statistic needs no permuting. Returns (name -> float32 vector, tokens seen)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    names = {}
    for i, layer in enumerate(model.model.layers):
        for hf, gg in _LAYER_NAMES.items():
            mod = layer.get_submodule(hf.rsplit(".", 1)[0])
            if isinstance(mod, torch.nn.Linear):
                names[mod] = f"blk.{i}.{gg}"
    if not getattr(model.config, "tie_word_embeddings", False):
        names[model.lm_head] = "output.weight"
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for m, n in names.items()}

    def hook(mod, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sums[names[mod]] += (x * x).sum(0)

    handles = [m.register_forward_pre_hook(hook) for m in names]
    tokens = 0
    try:
        with torch.inference_mode():
            for w in windows:
                ids = torch.as_tensor([list(w)], dtype=torch.long)
                model(input_ids=ids, use_cache=False)
                tokens += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ConfigError("importance matrix: no calibration tokens")
    return {n: (v / tokens).float().numpy() for n, v in sums.items()}, tokens


def llama_quantize(f32_file: Path, out_file: Path, qtype: str, embedding_qtype: str = "auto",
                   imatrix: dict[str, np.ndarray] | None = None, threads: int = 2) -> dict:
    """``llama_model_quantize`` (llama.cpp's own quantizer, through llama-cpp-python) from ``f32_file`` to
    ``out_file`` (written to a temp name, then renamed); returns the tensor types it chose."""
    import ctypes

    gguf = _import_gguf()
    lc = _llama_cpp()
    ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{qtype}", None) if qtype != "F32" else lc.LLAMA_FTYPE_ALL_F32
    if ftype is None:
        raise UnsupportedError(f"gguf option qtype={qtype}: llama-cpp-python {lc.__version__} has no "
                               f"LLAMA_FTYPE_MOSTLY_{qtype}")
    if qtype in NEEDS_IMATRIX and not imatrix:
        raise ConfigError(f"gguf option qtype={qtype}: llama.cpp quantizes {qtype} only with an importance matrix; "
                          "give calibration text (recipes: the training split; CLI: --calibration-texts FILE) "
                          "and keep imatrix: true")
    params = lc.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    if embedding_qtype != "auto":
        t = int(gguf.GGMLQuantizationType[embedding_qtype])
        params.token_embedding_type = t
        params.output_tensor_type = t
    keep = []  # the C side reads these buffers during the call
    if imatrix:
        entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-name terminated
        for e, (name, vec) in zip(entries, imatrix.items()):
            arr = np.ascontiguousarray(vec, dtype=np.float32)
            keep += [name.encode(), arr]
            e.name, e.size = keep[-2], arr.size
            e.data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = entries
        keep.append(entries)
    tmp = out_file.with_name(out_file.name + ".tmp")
    try:
        rc = lc.llama_model_quantize(str(f32_file).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise ModelSourceError(f"llama_model_quantize({f32_file.name} -> {qtype}) failed with code {rc}; "
                                   "its log above says why")
        tmp.replace(out_file)
    finally:
        tmp.unlink(missing_ok=True)
    types: dict[str, int] = {}
    for t in gguf.GGUFReader(str(out_file)).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"tensor_types": dict(sorted(types.items())), "types": sorted(types)}


def _use_llama_cpp(o: "GgufOptions") -> bool:
    if o.quantizer == "gguf-py":
        return False
    import importlib.util

    have = importlib.util.find_spec("llama_cpp") is not None
    if o.quantizer == "llama.cpp" and not have:
        _llama_cpp()  # raises the install line
    if not have and o.qtype not in GGUF_PY_QTYPES:
        raise UnsupportedError(f"gguf qtype {o.qtype} is written by llama.cpp's quantizer: pip install "
                               f"'edgeft[bench]' (llama-cpp-python); without it: {', '.join(GGUF_PY_QTYPES)}")
    return have


@EXPORTERS.register("gguf", options=GgufOptions)
def export_gguf(model_dir: Path, out_dir: Path, opset: int = 18, with_past: bool = True, tolerance: float = 2e-3,
                sample_ids: Sequence[int] | None = None, quality_ids: Sequence[Sequence[int]] | None = None,
                calibration_ids: Sequence[Sequence[int]] | None = None, opts: GgufOptions | None = None,
                **options) -> dict:
    """Write ``out_dir/model-<qtype>.gguf`` (llama.cpp's quantizer when installed, with an importance matrix from
    ``calibration_ids``, token windows disjoint from ``quality_ids``) and score it against the fp32 model."""
    from edgeft.metrics.lm import export_quality_windows, quality_vs_reference

    o = GgufOptions.of(opts, **options)
    model_dir, out_dir = require_hf_folder(model_dir), Path(out_dir)
    out = out_dir / f"model-{o.qtype.lower()}.gguf"
    t0 = time.perf_counter()
    if not _use_llama_cpp(o):
        info = write_gguf(model_dir, out, o.qtype, o.embedding_qtype, o.tokenizer_pre)
        info["quantizer"] = "gguf-py (gguf.quants)"
    else:
        lc = _llama_cpp()
        f32 = out_dir / f".{out.stem}.f32.gguf"
        try:
            conv = write_gguf(model_dir, f32, "F32", "F32", o.tokenizer_pre)
            if o.qtype == "F32":
                f32.replace(out)
                info = {**conv, "quantizer": "none (F32)"}
            else:
                imat, imat_info = None, {"used": False}
                if o.qtype in ("F16", "BF16", "Q8_0"):
                    imat_info["reason"] = f"{o.qtype} does not use one"
                elif not o.imatrix:
                    imat_info["reason"] = "imatrix: false"
                elif not calibration_ids:
                    imat_info["reason"] = "no calibration windows given"
                else:
                    t1 = time.perf_counter()
                    imat, n_tok = importance_matrix(model_dir, calibration_ids)
                    imat_info = {"used": True, "tensors": len(imat), "tokens": n_tok, "windows": len(calibration_ids),
                                 "seconds": time.perf_counter() - t1}
                q = llama_quantize(f32, out, o.qtype, o.embedding_qtype, imat, o.threads)
                info = {"tensors": conv["tensors"], "qtype": o.qtype, "embedding_qtype": o.embedding_qtype,
                        "tied_lm_head": conv["tied_lm_head"], **q, "imatrix": imat_info,
                        "quantizer": f"llama.cpp llama_model_quantize (llama-cpp-python {lc.__version__})"}
        finally:
            f32.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                 "generation_config.json", "chat_template.jinja"):
        if (model_dir / name).is_file() and not (out_dir / name).exists():
            (out_dir / name).write_bytes((model_dir / name).read_bytes())
    report = {"format": "gguf", **info, "file": out.name, "size_bytes": size_of(out, "gguf"), "export_seconds": seconds}
    try:
        from edgeft.runtime.llamacpp import LlamaCppLM

        lm = LlamaCppLM(out, threads=2)
    except UnsupportedError as e:
        report["quality"] = {"skipped": str(e)}
        log.warning("gguf export: quality check skipped: %s", e)
    else:
        fp = o.qtype == "F32"
        report["quality"] = quality_vs_reference(model_dir, lm, export_quality_windows(sample_ids, quality_ids),
                                                 f"gguf export ({o.qtype})", o.min_top1_agreement,
                                                 o.max_ppl_increase_pct,
                                                 max_abs_logit_diff=tolerance * 10 if fp else None)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report
