"""onnxruntime-genai artifacts (the model builder's folder: model.onnx + genai_config.json) run by
``og.Model`` / ``og.Generator``, behind :class:`edgeft.runtime.base.CausalLM`.

Threads come from the device profile: the decoder's session options are overlaid on the folder's
``genai_config.json`` (``intra_op_num_threads``), the file itself is left untouched. Greedy search
is the generator's own (``do_sample=False``); ``logits`` reads the generator's ``logits`` output
after appending the whole window (0.18 returns every position of the last forward pass).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError, UnsupportedError, optional_import
from edgeft.runtime.base import CausalLM, until_eos


def _og():
    return optional_import("onnxruntime_genai", "running a genai artifact needs onnxruntime-genai: pip install "
                                                "onnxruntime-genai")


class GenaiLM(CausalLM):
    """A folder built by onnxruntime-genai's model builder (``edgeft export --preset genai-int4``)."""

    def __init__(self, path: Path, threads: int = 1, spinning: bool | None = None) -> None:
        og = _og()
        path = Path(path)
        folder = path.parent if path.is_file() else path
        if not (folder / "genai_config.json").is_file():
            raise ModelSourceError(f"{folder}: no genai_config.json; build it with an export preset of format genai "
                                   "(e.g. edgeft export MODEL --preset genai-int4)")
        self.path = folder
        self.name = str(path)
        self.threads = threads
        cfg = og.Config(str(folder))
        so: dict = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        if spinning is not None:
            so["allow_spinning"] = "1" if spinning else "0"
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": so}}}))
        self.model = og.Model(cfg)
        self.context_length = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]

    def _generator(self, max_length: int, min_length: int = 0):
        og = _og()
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max_length, min_length=min_length, batch_size=1)
        return og.Generator(self.model, params)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, np.int32)
        gen = self._generator(max_length=len(ids) + 1)
        gen.append_tokens(ids)
        out = np.asarray(gen.get_output("logits"))
        if out.ndim != 3 or out.shape[1] != len(ids):
            raise UnsupportedError(f"{self.path}: onnxruntime-genai returned logits of shape {out.shape} for "
                                   f"{len(ids)} tokens; per-position logits are not exposed by this build")
        return out[0].astype(np.float32)

    def _decode(self, prompt: Sequence[int], new_tokens: int, ignore_eos: bool):
        """Greedy tokens; with ``ignore_eos`` the generator may not stop before ``new_tokens`` (min_length)."""
        n = len(prompt)
        gen = self._generator(max_length=n + new_tokens, min_length=n + new_tokens if ignore_eos else 0)
        out: list[int] = []
        steps: list[float] = []
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(prompt, np.int32))
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
        ttft = time.perf_counter() - t0
        while len(out) < new_tokens and not gen.is_done():
            t = time.perf_counter()
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            steps.append(time.perf_counter() - t)
        return out, ttft, steps

    def generate(self, prompts, max_new_tokens, eos_ids):
        eos = set(int(e) for e in eos_ids)
        return [until_eos(self._decode(p, max_new_tokens, ignore_eos=False)[0], eos) for p in prompts]

    def timed_generate(self, prompt, new_tokens):
        _, ttft, steps = self._decode(prompt, new_tokens, ignore_eos=True)
        return ttft, steps
