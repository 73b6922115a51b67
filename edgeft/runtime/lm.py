"""Run a causal LM artifact (PyTorch folder or ONNX with KV cache) behind one small interface.

Used by export/quantize (parity, quality), validate (accuracy, latency) and benchmarks.
Greedy decoding only: validation needs deterministic outputs. The interface, the format registry
(:func:`load_lm`) and the shared helpers are in :mod:`edgeft.runtime.base` and re-exported here; the
ONNX decode loop is :class:`edgeft.runtime.ortcore.OrtDecoder`, the same code the device runner ships.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeft.runtime.base import (CausalLM, find_onnx, greedy_decode, head_dim_from_config, load_lm, session_options,
                                 until_eos)
from edgeft.runtime.ortcore import OrtDecoder

__all__ = ["CausalLM", "OrtLM", "TorchLM", "find_onnx", "greedy_decode", "head_dim_from_config", "load_lm",
           "session_options"]


# --------------------------------------------------------------------------- ONNX Runtime


class OrtLM(OrtDecoder, CausalLM):
    """An ONNX decoder with KV cache (optimum or onnxruntime-genai builder graph); see
    :class:`~edgeft.runtime.ortcore.OrtDecoder` for the plain and IO-bound loops and their defaults."""


# --------------------------------------------------------------------------- PyTorch


class TorchLM(CausalLM):
    """A transformers folder (or an in-memory model) run in eager PyTorch, fp32."""

    def __init__(self, path_or_model, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        if isinstance(path_or_model, (str, Path)):
            self.name = str(path_or_model)
            self.model = AutoModelForCausalLM.from_pretrained(str(path_or_model), torch_dtype=torch.float32)
        else:
            self.name = type(path_or_model).__name__
            self.model = path_or_model
        self.model.eval()
        # AdapterHub (adapters 1.3) bottleneck adapters decode garbage from the second token on when
        # generate() reuses the KV cache (teacher-forced and cache-free outputs are right): recompute.
        self.use_cache = not hasattr(self.model, "adapters_config")

    def logits(self, input_ids):
        import torch

        with torch.inference_mode():
            ids = torch.as_tensor(np.asarray(input_ids, np.int64))[None, :]
            return self.model(input_ids=ids).logits[0].float().numpy()

    def generate(self, prompts, max_new_tokens, eos_ids):
        import torch

        b = len(prompts)
        width = max(len(p) for p in prompts)
        pad = int(list(eos_ids)[0])
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(list(p))
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            g = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=list(eos_ids), pad_token_id=pad, use_cache=self.use_cache)
        eos = set(eos_ids)
        return [until_eos(row, eos) for row in g[:, width:].tolist()]

    def timed_generate(self, prompt, new_tokens):
        import torch

        ids = torch.as_tensor(list(prompt))[None, :]
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True)
            ttft = time.perf_counter() - t0
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(new_tokens - 1):
                t = time.perf_counter()
                if self.use_cache:
                    out = self.model(input_ids=nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                else:  # see __init__: the whole sequence again
                    ids = torch.cat([ids, nxt], dim=1)
                    out = self.model(input_ids=ids, use_cache=False)
                steps.append(time.perf_counter() - t)
                nxt = out.logits[:, -1:].argmax(-1)
        return ttft, steps
