"""Projected latency: a per-token roofline from a device profile and an artifact's bytes and FLOPs.

The validate report labels latency by how it was obtained (``measured-host``, ``projected``,
``measured-device``). This module computes the ``projected`` numbers, all as pure functions
over plain dicts and a :class:`~edgeft.config.schema.DeviceProfile` (no torch, no onnx import).

Pipeline:

1. :func:`model_costs` turns an artifact (its ``inspect_onnx`` summary, the HF config, its size
   and weight precision) into per-token costs: weight bytes read, FLOPs, KV-cache bytes.
2. :func:`project_decode` / :func:`project_prefill` turn costs into time on one device:
   ``time = max(bytes / bandwidth, flops / throughput) + overhead`` for a decode step, and
   ``compute + one weight read + overhead`` for the prompt.
3. :func:`calibrate_overhead` fits the fixed per-token runtime overhead on the host, where the
   latency is also measured, and :func:`projection_error` says how far a projection is from a
   measurement.

Units: bytes, FLOPs (an int8 multiply-add counts as 2 ops, like an fp32 FMA), milliseconds.
GB/s, GFLOP/s and GOP/s in the profiles are decimal (1e9).
"""

from __future__ import annotations

from typing import Any, Optional

from edgeft.config.schema import DeviceProfile

__all__ = [
    "BYTES_PER_PARAM",
    "KV_BYTES_PER_ELEMENT",
    "calibrate_overhead",
    "flops_per_token_at",
    "kv_bytes_per_token_at",
    "mean_decode_context",
    "model_costs",
    "model_params",
    "project_decode",
    "project_prefill",
    "projection_error",
]

MB = 1024 * 1024

#: Stored bytes per weight for each precision (block scales / zero points are not included:
#: they are part of ``size_bytes`` and so of the weight bytes read, but not of the embedding
#: table subtracted from it).
BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}

#: The exported decoders keep their KV cache in fp32 (past_key_values inputs are float).
KV_BYTES_PER_ELEMENT = 4

_QUANTIZED = ("int8", "int4")

# Model types whose MLP is a plain up/down pair (2 matrices); everything else is treated as a
# LLaMA-style gated MLP (gate, up, down: 3 matrices).
_UNGATED_MLP = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "mpt", "codegen",
    "starcoder2", "bert", "roberta", "distilbert",
}


# --------------------------------------------------------------------------- costs


def _cfg(config: dict, *keys: str) -> Optional[Any]:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return None


def model_params(config: Optional[dict]) -> Optional[dict]:
    """Parameter counts of a decoder from its HF ``config`` dict (None when fields are missing).

    With ``L = num_hidden_layers``, ``H = hidden_size``, ``I = intermediate_size``,
    ``heads = num_attention_heads``, ``kv = num_key_value_heads`` (default ``heads``),
    ``hd = head_dim`` (default ``H / heads``), ``V = vocab_size``:

    - attention per layer: ``q = H*heads*hd``, ``k = v = H*kv*hd``, ``o = heads*hd*H``;
    - MLP per layer: ``m * H * I`` with ``m = 3`` (LLaMA-style gated MLP: gate, up, down) or
      ``m = 2`` for the plain MLPs of :data:`_UNGATED_MLP` model types (``I`` defaults to ``4H``);
    - ``non_embedding = L * (attention + MLP)`` (norm weights and biases, < 0.1 %, are ignored);
    - ``embedding = lm_head = V * H``; ``tied = tie_word_embeddings`` (HF default True).

    GPT-2 style names (``n_layer``, ``n_embd``, ``n_head``, ``n_inner``) and a nested
    ``text_config`` are accepted.
    """
    config = dict(config or {})
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    layers = _cfg(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _cfg(config, "hidden_size", "n_embd", "d_model")
    heads = _cfg(config, "num_attention_heads", "n_head")
    vocab = _cfg(config, "vocab_size")
    if not (layers and hidden and heads and vocab):
        return None
    kv_heads = _cfg(config, "num_key_value_heads") or heads
    head_dim = _cfg(config, "head_dim") or hidden // heads
    inter = _cfg(config, "intermediate_size", "n_inner") or 4 * hidden
    mlp_mats = 2 if config.get("model_type") in _UNGATED_MLP else 3
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = mlp_mats * hidden * inter
    return {
        "layers": int(layers), "hidden_size": int(hidden), "intermediate_size": int(inter),
        "heads": int(heads), "kv_heads": int(kv_heads), "head_dim": int(head_dim), "vocab_size": int(vocab),
        "mlp_matrices": mlp_mats, "non_embedding": int(layers * (attn + mlp)), "embedding": int(vocab * hidden),
        "tied": bool(config.get("tie_word_embeddings", True)),
    }


def model_costs(onnx_info: Optional[dict], config: Optional[dict], size_bytes: int, precision: Optional[str],
                embedding_precision: Optional[str] = None, lm_head_precision: Optional[str] = None) -> dict:
    """Per-decode-token costs of one artifact.

    ``onnx_info`` is :func:`edgeft.validate.compat.inspect_onnx`'s summary (or None for a
    non-ONNX artifact), ``config`` the HF config dict, ``size_bytes`` the artifact's stored size,
    ``precision`` its weight precision (``fp32``/``fp16``/``int8``/``int4``; None: the
    summary's ``weight_precision``, else fp32). Parameter counts come from :func:`model_params`.

    Formulas (``V`` vocab, ``H`` hidden, ``L`` layers, ``kv``/``hd`` KV heads / head dim,
    ``N`` non-embedding params, ``b(p)`` = :data:`BYTES_PER_PARAM`):

    - **embedding table** stored as ``embedding_bytes = V*H*b(e)``. ``e`` (override with
      ``embedding_precision``) is the weight precision when the graph gathers from a
      block-quantized table (``GatherBlockQuantized``), fp16 for an fp16 artifact, and fp32
      otherwise: the weight-only / dynamic quantizers rewrite MatMul ops and leave the table
      that feeds the token-embedding ``Gather`` in float.
    - **LM head** read per token: ``lm_head_bytes``. Untied: the head is an ordinary matrix,
      already inside ``size_bytes`` at the artifact's precision, so nothing is added. Tied: the
      head reads the one stored table, so ``lm_head_bytes = V*H*b(h)`` with ``h`` (override with
      ``lm_head_precision``) = ``e``; for a quantized artifact this means the tied head is
      assumed to stay fp32 (``V*H*4``) unless the table itself is block-quantized. (True of the
      int8/int4 MatMulNBits artifacts here: their ``fp32_matmuls`` include the LM head.)
    - **weight_bytes** (read once per token) ``= size_bytes - embedding_bytes + lm_head_bytes``:
      the embedding table is only gathered, one row per token (``H*b(e)`` bytes, negligible),
      while every other stored weight is read every token. For a tied model with a float table
      this equals ``size_bytes``. Never below ``lm_head_bytes``, and ``size_bytes`` when the
      config is unusable.
    - **flops_per_token** ``= 2*N + 2*V*H`` (one multiply-add per weight of every matrix plus the
      LM head; norms, rotary, softmax ignored). Attention over the context is separate:
      ``attn_flops_per_context_token = 4*L*heads*hd`` (``Q.K^T`` and ``A.V``, 2 FLOPs per
      multiply-add each), so at context ``c`` the total is :func:`flops_per_token_at`
      ``= flops_per_token + 4*L*heads*hd*c`` (``heads*hd = H`` for most models: ``4*L*H*c``).
    - **kv_bytes_per_context_token** ``= 2*L*kv*hd*4`` (keys and values, fp32 cache);
      :func:`kv_bytes_per_token_at` ``= that * c`` is the KV cache read by one decode step.

    Without a usable config: ``weight_bytes = size_bytes``, ``flops_per_token =
    2 * size_bytes / b(precision)`` (params estimated from size) and no attention/KV terms.
    The result is a JSON-serialisable dict; ``assumptions`` lists the choices made.
    """
    # Over 80 lines: half is the docstring that states the cost formulas; the body computes them in the same order.
    ops = (onnx_info or {}).get("ops") or {}
    if precision is None:
        precision = (onnx_info or {}).get("weight_precision") or "fp32"
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(BYTES_PER_PARAM)}")
    int8_mode = (onnx_info or {}).get("int8_mode")
    size_bytes = int(size_bytes)
    assumptions: list[str] = []
    p = model_params(config)
    if p is None:
        assumptions.append("no usable HF config: all stored bytes read per token, params estimated from size")
        return {
            "precision": precision, "int8_mode": int8_mode, "size_bytes": size_bytes, "params": None,
            "embedding_bytes": 0, "lm_head_bytes": 0, "weight_bytes": size_bytes,
            "flops_per_token": 2.0 * size_bytes / BYTES_PER_PARAM[precision],
            "attn_flops_per_context_token": 0, "kv_bytes_per_context_token": 0, "assumptions": assumptions,
        }

    V, H = p["vocab_size"], p["hidden_size"]
    if embedding_precision is None:
        if "GatherBlockQuantized" in ops and precision in _QUANTIZED:
            embedding_precision = precision
        elif precision == "fp16":
            embedding_precision = "fp16"
        else:
            embedding_precision = "fp32"
    embedding_bytes = V * H * BYTES_PER_PARAM[embedding_precision]
    assumptions.append(f"embedding table stored {embedding_precision}, only gathered (one row per token)")
    if p["tied"]:
        lm_head_precision = lm_head_precision or embedding_precision
        lm_head_bytes = V * H * BYTES_PER_PARAM[lm_head_precision]
        assumptions.append(f"tied LM head reads the {lm_head_precision} table every token")
    else:
        lm_head_bytes = 0.0  # inside size_bytes at the artifact's precision
        assumptions.append(f"untied LM head stored at {precision}, inside the artifact size")
    weight_bytes = size_bytes - embedding_bytes + lm_head_bytes
    if weight_bytes < lm_head_bytes or weight_bytes <= 0:
        assumptions.append("artifact smaller than the config's embedding table: all stored bytes counted")
        weight_bytes = float(size_bytes)
    return {
        "precision": precision, "int8_mode": int8_mode, "size_bytes": size_bytes, "params": p,
        "embedding_precision": embedding_precision, "embedding_bytes": embedding_bytes,
        "lm_head_bytes": lm_head_bytes, "weight_bytes": float(weight_bytes),
        "flops_per_token": float(2 * p["non_embedding"] + 2 * V * H),
        "attn_flops_per_context_token": float(4 * p["layers"] * p["heads"] * p["head_dim"]),
        "kv_bytes_per_context_token": float(2 * p["layers"] * p["kv_heads"] * p["head_dim"] * KV_BYTES_PER_ELEMENT),
        "assumptions": assumptions,
    }


def flops_per_token_at(costs: dict, context: int) -> float:
    """FLOPs of one decode step attending ``context`` positions: ``flops_per_token + 4*L*heads*hd*context``."""
    return costs["flops_per_token"] + costs["attn_flops_per_context_token"] * max(int(context), 0)


def kv_bytes_per_token_at(costs: dict, context: int) -> float:
    """KV-cache bytes read by one decode step at ``context``: ``2*L*kv*hd*4 * context``."""
    return costs["kv_bytes_per_context_token"] * max(int(context), 0)


def mean_decode_context(prompt_tokens: int, new_tokens: int) -> float:
    """Mean context of the decode steps of a ``prompt_tokens`` + ``new_tokens`` run (``prompt + new/2``).

    The measured ``per_token_ms_p50`` is over steps attending ``prompt+1 .. prompt+new-1``
    positions; use this as ``context_len`` when comparing a projection with it.
    """
    return prompt_tokens + new_tokens / 2


# --------------------------------------------------------------------------- roofline


def _integer_compute(costs: dict, device: DeviceProfile) -> bool:
    """int8/int4 weights run on the device's integer units: the device runs that precision (and int8 mode)."""
    prec = costs.get("precision")
    if prec not in _QUANTIZED or prec not in device.precisions:
        return False
    mode = costs.get("int8_mode")
    return mode is None or mode in device.int8_modes


def _throughput(costs: dict, device: DeviceProfile) -> tuple[float, str]:
    if _integer_compute(costs, device):
        return device.compute.int8_gops * 1e9, f"compute {device.compute.int8_gops:g} GOP/s (int8 units)"
    return device.compute.fp32_gflops * 1e9, f"compute {device.compute.fp32_gflops:g} GFLOP/s (fp32)"


def _streamed_weight_bytes(costs: dict, device: DeviceProfile) -> tuple[float, str]:
    """Weight bytes that come over the memory bus per pass, and the assumption behind it."""
    w = costs["weight_bytes"]
    bw = device.memory.bandwidth_gbps
    if device.onchip_param_mb is None:
        return w, f"weights read from RAM at {bw:g} GB/s"
    onchip = device.onchip_param_mb * MB
    if w <= onchip:
        return 0.0, f"weights ({w / MB:.1f} MiB) fit the {device.onchip_param_mb:g} MiB on-chip memory: not streamed"
    return w - onchip, (
        f"weights ({w / MB:.1f} MiB) exceed {device.onchip_param_mb:g} MiB on-chip: "
        f"the rest streams at {bw:g} GB/s every pass"
    )


def project_decode(costs: dict, device: DeviceProfile, context_len: float, overhead_ms: float = 0.0) -> dict:
    """Projected time of one decode step at ``context_len`` on ``device`` (roofline).

    ``per_token_ms = max(bytes / (bandwidth_gbps*1e9), flops / throughput) * 1e3 + overhead_ms``

    - ``bytes = streamed weight bytes + kv_bytes_per_token_at(context_len)``; the weight part is
      ``weight_bytes``, except on a device with ``onchip_param_mb``: weights that fit on-chip are
      not streamed (0), larger ones stream ``weight_bytes - onchip_param_mb`` every step at
      ``memory.bandwidth_gbps`` (the first ``onchip_param_mb`` stay cached, as on an Edge TPU).
      The KV cache always comes from RAM.
    - ``flops = flops_per_token_at(costs, context_len)``.
    - ``throughput = compute.int8_gops*1e9`` for int8/int4 weights on a device that lists the
      precision (and, for int8, the artifact's int8 mode), else ``compute.fp32_gflops*1e9``
      (fp16 also uses the fp32 number: the profiles have no fp16 figure).
    - ``bound`` is whichever term is larger; ``decode_tok_s = 1000 / per_token_ms``.
    """
    bw = device.memory.bandwidth_gbps * 1e9
    wbytes, mem_note = _streamed_weight_bytes(costs, device)
    nbytes = wbytes + kv_bytes_per_token_at(costs, context_len)
    flops = flops_per_token_at(costs, context_len)
    tput, tput_note = _throughput(costs, device)
    memory_ms = nbytes / bw * 1e3
    compute_ms = flops / tput * 1e3
    per_token = max(memory_ms, compute_ms) + overhead_ms
    return {
        "label": "projected",
        "per_token_ms": per_token,
        "decode_tok_s": 1e3 / per_token if per_token > 0 else float("inf"),
        "bound": "memory" if memory_ms >= compute_ms else "compute",
        "bytes_per_token": nbytes,
        "flops_per_token": flops,
        "memory_ms": memory_ms,
        "compute_ms": compute_ms,
        "overhead_ms": overhead_ms,
        "context_len": context_len,
        "assumptions": [*costs.get("assumptions", []), mem_note, tput_note,
                        f"KV cache fp32 from RAM at context {context_len:g}",
                        f"fixed runtime overhead {overhead_ms:.2f} ms per step"],
    }


def project_prefill(costs: dict, device: DeviceProfile, prompt_tokens: int, overhead_ms: float = 0.0) -> dict:
    """Projected time to first token: the prompt processed in one pass.

    ``ttft_ms = flops / throughput * 1e3 + weight_read_ms + overhead_ms`` with

    - ``flops = P * flops_per_token + 4*L*heads*hd * P*(P+1)/2`` for ``P = prompt_tokens`` (every
      prompt position goes through every matrix, the LM head included, as the exported graphs
      return logits for all positions; position ``i`` attends ``i`` positions);
    - ``weight_read_ms`` = one read of the streamed weight bytes at ``memory.bandwidth_gbps``
      (the prompt is batched, so weights are read once; not overlapped with compute: a
      conservative sum, not a max);
    - throughput as in :func:`project_decode`; ``overhead_ms`` is added once.
    """
    P = max(int(prompt_tokens), 0)
    flops = P * costs["flops_per_token"] + costs["attn_flops_per_context_token"] * P * (P + 1) / 2
    tput, tput_note = _throughput(costs, device)
    wbytes, mem_note = _streamed_weight_bytes(costs, device)
    compute_ms = flops / tput * 1e3
    weight_read_ms = wbytes / (device.memory.bandwidth_gbps * 1e9) * 1e3
    return {
        "label": "projected",
        "ttft_ms": compute_ms + weight_read_ms + overhead_ms,
        "prompt_tokens": P,
        "prefill_flops": flops,
        "prefill_bytes": wbytes,
        "prefill_compute_ms": compute_ms,
        "prefill_weight_read_ms": weight_read_ms,
        "prefill_overhead_ms": overhead_ms,
        "assumptions": [*costs.get("assumptions", []), mem_note, tput_note,
                        "prefill: compute-bound prompt pass plus one weight read (not overlapped)"],
    }


# --------------------------------------------------------------------------- calibration


def calibrate_overhead(costs: dict, host_device: DeviceProfile, measured_per_token_ms: float,
                       context_len: float) -> float:
    """Fixed per-token overhead (ms) that makes the host projection equal the host measurement.

    ``overhead = max(0, measured_per_token_ms - project_decode(costs, host, context_len)["per_token_ms"])``

    The overhead stands for what the roofline leaves out (runtime dispatch per step, the decode
    loop, sampling, cache copies). It is applied to other devices as the same absolute number of
    milliseconds, scaled by nothing: the profiles give no basis for scaling it (a slower CPU
    probably spends longer there, so projections for slower devices lean optimistic). Clamped at
    0: when the host is faster than its roofline (profile numbers too pessimistic), no negative
    time is subtracted from other devices.
    """
    bare = project_decode(costs, host_device, context_len, 0.0)["per_token_ms"]
    return max(0.0, float(measured_per_token_ms) - bare)


def _value(d: dict, key: str) -> Optional[float]:
    for k in (key, f"{key}_p50"):
        if d.get(k) is not None:
            return float(d[k])
    return None


def projection_error(projected: dict, measured: dict) -> dict:
    """How far a projection is from a measurement, for ``per_token_ms`` and ``ttft_ms``.

    ``projected`` is a :func:`project_decode` and/or :func:`project_prefill` result (merge them
    with ``{**decode, **prefill}``); ``measured`` a latency dict (``per_token_ms_p50``,
    ``ttft_ms_p50``, as written by the bench; plain ``per_token_ms``/``ttft_ms`` work too).
    For each metric present in both: ``{"projected", "measured", "error_ms"`` (projected -
    measured; > 0: projection slower), ``"abs_error_ms"``, ``"pct_error"`` (``error / measured *
    100``, signed), ``"abs_pct_error"}``.
    """
    out: dict[str, dict] = {}
    for key in ("per_token_ms", "ttft_ms"):
        p, m = _value(projected, key), _value(measured, key)
        if p is None or m is None:
            continue
        err = p - m
        pct = err / m * 100 if m else float("inf")
        out[key] = {"projected": p, "measured": m, "error_ms": err, "abs_error_ms": abs(err),
                    "pct_error": pct, "abs_pct_error": abs(pct)}
    return out
