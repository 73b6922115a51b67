"""LiteRT (.tflite) export of a LLaMA-family causal LM through litert-torch's generative converter.

``litert_torch.generative`` rebuilds the decoder from its own layers (``model_builder.DecoderOnlyModel``,
the path its SmolLM2 example takes), loads the HF safetensors by name and converts it to one
flatbuffer with two signatures sharing the weights:

- ``prefill_<P>``: ``tokens [1, P]``, ``input_pos [P]`` and every layer's K/V cache -> logits
  ``[1, P, vocab]`` and the updated caches (``P``: option ``prefill_seq_len``);
- ``decode``: one token at one position -> logits ``[1, 1, vocab]`` and the updated caches.

The caches (``kv_cache_k_<i>``, ``kv_cache_v_<i>``, ``kv_cache_max_len`` slots) are graph inputs and
outputs: the runtime (:class:`edgeft.runtime.litert.LiteRTLM`) carries them from call to call.
Quantization is the converter's own (``quantize`` + ``weight_bits``): dynamic int8 (int8 weights per
channel, int8 dynamic activations) or dynamic int4 in blocks of 32/128; full integer is not offered
for decoders by the converter and is refused.

The converter imports tensorflow (its LoRA helpers read the TFLite schema from it), which the
``litert`` extra does not pull in: the ``litert-lm`` extra adds it.

Checks: the fp32 graph against the HF PyTorch model (prefill + cached decode steps, max |logit diff|
within the tolerance); quantized graphs by :func:`edgeft.metrics.lm.quality_vs_reference` on
the held-out windows (perplexity rise and top-1 agreement gates).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path


from edgeft.artifacts import size_of
from edgeft.errors import ParityError, UnsupportedError
from edgeft.fileio import staged_dir

log = logging.getLogger(__name__)

LM_EXTRA = "pip install 'edgeft[litert,litert-lm]'"
LLAMA_TYPES = ("llama",)  # SmolLM2 is LlamaForCausalLM


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def require_generative():
    """``(model_config, model_builder, converter, export_config)`` modules of litert-torch's generative API."""
    if not _has_tensorflow():
        raise UnsupportedError(f"LiteRT export of a causal LM uses litert-torch's generative converter, which imports "
                               f"tensorflow (not installed): {LM_EXTRA}")
    try:
        import litert_torch.generative.layers.model_config as model_config
        from litert_torch.generative.utilities import converter, export_config, model_builder
    except ImportError as e:
        raise UnsupportedError(f"LiteRT export of a causal LM needs litert-torch's generative converter, which "
                               f"imports {e.name}: {LM_EXTRA}") from e
    return model_config, model_builder, converter, export_config


def model_config(hf: dict, where: Path):
    """The generative API's ``ModelConfig`` for an HF LLaMA config (refusing what it would build wrong)."""
    cfg, _, _, _ = require_generative()
    if hf.get("model_type") not in LLAMA_TYPES:
        raise UnsupportedError(f"{where}: LiteRT causal-LM export covers LLaMA-family decoders "
                               f"({', '.join(LLAMA_TYPES)}); model type {hf.get('model_type')!r} is not one")
    heads, hidden = int(hf["num_attention_heads"]), int(hf["hidden_size"])
    head_dim = int(hf.get("head_dim") or hidden // heads)
    problems = []
    if hf.get("rope_scaling"):
        problems.append(f"rope_scaling {hf['rope_scaling']}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention/MLP biases")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r}")
    if head_dim * heads != hidden:
        problems.append(f"head_dim {head_dim} x {heads} heads != hidden {hidden}")
    if problems:
        raise UnsupportedError(f"{where}: the generative converter's LLaMA block has no {', '.join(problems)}; "
                               "use an ONNX or ExecuTorch preset for this model")
    attn = cfg.AttentionConfig(num_heads=heads, head_dim=head_dim,
                               num_query_groups=int(hf.get("num_key_value_heads") or heads),
                               rotary_base=int(hf.get("rope_theta", 10000)), rotary_percentage=1.0)
    ff = cfg.FeedForwardConfig(type=cfg.FeedForwardType.GATED, activation=cfg.ActivationConfig(cfg.ActivationType.SILU),
                               intermediate_size=int(hf["intermediate_size"]))
    norm = cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=float(hf.get("rms_norm_eps", 1e-6)))
    block = cfg.TransformerBlockConfig(attn_config=attn, ff_config=ff, pre_attention_norm_config=norm,
                                       post_attention_norm_config=norm)
    return cfg.ModelConfig(vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
                           max_seq_len=int(hf.get("max_position_embeddings", 2048)), embedding_dim=hidden,
                           block_configs=block, final_norm_config=norm,
                           lm_head_share_weight_with_embedding=bool(hf.get("tie_word_embeddings", False)))


def converter_quantization(opts) -> str:
    """The converter's ``quantize`` name for the preset options (``QuantizationName`` values)."""
    if opts.quantize == "full":
        raise UnsupportedError("full-integer int8 is not offered by litert-torch's generative converter for a "
                               "causal LM; use quantize: dynamic (int8 or int4 weights, dynamic activations)")
    if opts.quantize == "none":
        return "none"
    if opts.weight_bits == 8:
        return "dynamic_int8"
    return f"dynamic_int4_block{opts.block_size}"


def convert(model_dir: Path, opts, tmp: Path) -> tuple[Path, dict, float]:
    """Build the generative model from ``model_dir`` and convert it into ``tmp``; (file, signatures, seconds)."""
    _, builder, converter, export_config = require_generative()
    hf = json.loads((model_dir / "config.json").read_text())
    mc = model_config(hf, model_dir)
    P, L = int(opts.prefill_seq_len), int(opts.kv_cache_max_len)
    if P >= L:
        raise UnsupportedError(f"LiteRT causal-LM export: prefill_seq_len {P} must be below kv_cache_max_len {L}")
    if L > mc.max_seq_len:
        raise UnsupportedError(f"LiteRT causal-LM export: kv_cache_max_len {L} exceeds {model_dir}'s "
                               f"max_position_embeddings {mc.max_seq_len}; set options.kv_cache_max_len <= "
                               f"{mc.max_seq_len}")
    t0 = time.perf_counter()
    model = builder.build_decoder_only_model(str(model_dir), mc, builder.TENSOR_NAMES, mask_cache_size=L)
    out = tmp / "convert"
    out.mkdir()
    converter.convert_to_tflite(model, output_path=str(out), output_name_prefix="model", prefill_seq_len=P,
                                kv_cache_max_len=L, quantize=converter_quantization(opts), config=mc,
                                export_config=export_config.ExportConfig(output_logits_on_prefill=True))
    files = sorted(out.glob("*.tflite"))
    if len(files) != 1:
        raise ParityError(f"LiteRT causal-LM export: the converter wrote {[f.name for f in files]}, expected one "
                          ".tflite")
    from edgeft.runtime.litert import MODEL_FILE

    path = tmp / MODEL_FILE
    files[0].rename(path)
    shutil.rmtree(out)
    return path, {"prefill": f"prefill_{P}", "decode": "decode"}, time.perf_counter() - t0


def export_lm(model_dir: Path, out_dir: Path, opts, tolerance: float, sample_ids, quality_ids,
              preset_name: str) -> dict:
    """Convert, check and write ``out_dir`` (model.tflite, litert.json, tokenizer/config, export_report.json)."""
    from edgeft.metrics.lm import export_quality_windows, quality_vs_reference
    from edgeft.exporters.parity import cached_decoder_parity
    from edgeft.exporters.torchscript import copy_side_files
    from edgeft.runtime.litert import META_FILE, LiteRTLM

    require_generative()
    with staged_dir(out_dir) as tmp:  # a failed export leaves nothing behind
        copy_side_files(model_dir, tmp)
        path, sigs, seconds = convert(model_dir, opts, tmp)
        quant = converter_quantization(opts)
        meta = {"task": "causal-lm", "signatures": sigs, "prefill_seq_len": int(opts.prefill_seq_len),
                "kv_cache_max_len": int(opts.kv_cache_max_len), "quantize": quant, "precision": opts.precision,
                "int8_mode": opts.int8_mode}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        lm = LiteRTLM(tmp, threads=2)
        vocab = int(json.loads((model_dir / "config.json").read_text()).get("vocab_size", 200))
        ids = [int(t) % vocab for t in (sample_ids if sample_ids is not None else range(100, 116))]
        ids = ids[: int(opts.kv_cache_max_len)]
        if len(ids) < 2:
            raise UnsupportedError(f"LiteRT causal-LM export parity needs at least 2 sample tokens, got {len(ids)}")
        quantized = quant != "none"
        parity = cached_decoder_parity(model_dir, lm, ids, 4, tolerance, quantized, "litert export")
        wins = [w[: int(opts.kv_cache_max_len)] for w in export_quality_windows(
            ids if sample_ids is not None else None, quality_ids)]
        quality = quality_vs_reference(model_dir, lm, wins, f"litert export ({quant})",
                                       float(opts.min_top1_agreement) if quantized else 0.0,
                                       float(opts.max_ppl_increase_pct),
                                       max_abs_logit_diff=None if quantized else tolerance)
        size = size_of(path, "tflite")
        report = {"format": "tflite", "preset": preset_name, "task": "causal-lm", "options": opts.model_dump(),
                  "converter": "litert_torch.generative", "quantize": quant, "signatures": sigs,
                  "export_seconds": seconds, "size_bytes": size, "parity": parity,
                  "max_abs_diff": parity["max_abs_diff"], "top1_agreement": quality["top1_agreement"],
                  "quality": quality}
        (tmp / "export_report.json").write_text(json.dumps(report, indent=2))
    log.info("export %s: causal-LM tflite (%s), %.1f MB in %.0f s, perplexity %+.1f%%, top-1 agreement %.3f",
             preset_name, quant, size / 2**20, seconds, quality.get("ppl_increase_pct", float("nan")),
             quality["top1_agreement"])
    return report


__all__ = ["convert", "converter_quantization", "export_lm", "model_config", "require_generative"]
