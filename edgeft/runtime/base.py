"""The causal-LM interface every runtime implements, the format -> runtime registry, and the shared helpers.

Runtimes (``edgeft.runtime.lm``, ``.torchscript``, ``.genai``, ``.llamacpp``, ...) import this module
and nothing imports them back: :func:`load_lm` finds a format's class through :data:`RUNTIMES`, a
table of ``"module:Class"`` strings imported only when that format is loaded, so loading an ONNX
graph never imports torch or llama.cpp, and adding a format is one line in the table.

The greedy loop, ``find_onnx`` and ``session_options`` live in :mod:`edgeft.runtime.ortcore` (the
module that is also copied to measured devices) and are re-exported here for the runtimes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError
from edgeft.runtime.ortcore import find_onnx, greedy_decode, greedy_pairs, head_dim_from_config, session_options

__all__ = ["CausalLM", "RUNTIMES", "SingleSequenceLM", "find_onnx", "greedy_decode", "head_dim_from_config", "load_lm",
           "model_and_meta", "runtime_class", "session_options", "until_eos"]

# Artifact format (as recipes, presets and `edgeft.validate.Artifact` name it) -> "module:Class" of its runtime.
# The class is constructed as Class(path, threads). One line per format, kept in alphabetical order.
RUNTIMES: dict[str, str] = {
    "genai": "edgeft.runtime.genai:GenaiLM",
    "gguf": "edgeft.runtime.llamacpp:LlamaCppLM",
    "onnx": "edgeft.runtime.lm:OrtLM",
    "pte": "edgeft.runtime.executorch:ExecuTorchLM",
    "pytorch": "edgeft.runtime.lm:TorchLM",
    "tflite": "edgeft.runtime.litert:LiteRTLM",
    "torchscript": "edgeft.runtime.torchscript:TorchScriptLM",
}


class CausalLM:
    """Interface: ``logits`` for scoring, ``generate`` for the task metric, ``timed_generate`` for latency."""

    name = "lm"
    threads = 1

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [seq, vocab] (float32) for one sequence of token ids [seq]."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 eos_ids: Sequence[int]) -> list[list[int]]:
        """Greedy continuation of each prompt (batched, left-padded), stopping at any eos id."""
        raise NotImplementedError

    def timed_generate(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        """Generate exactly ``new_tokens`` tokens for one prompt; return (ttft_s, [per-token decode s])."""
        raise NotImplementedError

    def logit_stream(self, prompt: Sequence[int], max_new_tokens: int):
        """A generator of logits rows for a decode whose tokens the caller picks: it yields the row after the
        prompt, then the row after each token passed in with ``send(token)`` (at most ``max_new_tokens`` rows).

        This default re-runs :meth:`logits` over the whole sequence for every row (any runtime that scores a
        sequence can serve with it); runtimes with a KV cache override it (``OrtLM``)."""
        ids = [int(t) for t in prompt]
        token = yield np.asarray(self.logits(np.asarray(ids, np.int64)))[-1]
        for _ in range(max_new_tokens - 1):
            ids.append(int(token))
            token = yield np.asarray(self.logits(np.asarray(ids, np.int64)))[-1]

    def greedy_stream(self, prompt: Sequence[int], max_new_tokens: int, eos: set[int]):
        """Greedy decoding as a generator of ``(token, logits row)`` pairs, the row the token is the argmax of;
        an eos token, when chosen, is the last pair, and at most ``max_new_tokens`` pairs. This default takes
        one :meth:`logit_stream` row per token; ``OrtLM`` overrides it to speculate with its drafts, so a
        greedy request served token by token decodes exactly as validate's :meth:`generate` does."""
        stream = self.logit_stream(prompt, max_new_tokens)
        try:
            yield from greedy_pairs(next(stream), stream.send, max_new_tokens, eos)
        finally:
            stream.close()


class SingleSequenceLM(CausalLM):
    """A runtime whose static KV cache holds one sequence: ``generate`` and ``timed_generate`` run prompts one at a
    time through the subclass's ``_decode(prompt, new_tokens, eos) -> (tokens, ttft_s, [step_s])``."""

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        raise NotImplementedError

    def generate(self, prompts, max_new_tokens, eos_ids):
        """Greedy continuation, one prompt at a time (the cache holds one sequence)."""
        eos = set(int(e) for e in eos_ids)
        return [self._decode(list(p), max_new_tokens, eos)[0] for p in prompts]

    def timed_generate(self, prompt, new_tokens):
        _, ttft, steps = self._decode(list(prompt), new_tokens, None)
        return ttft, steps


def until_eos(tokens: Sequence[int], eos: set[int]) -> list[int]:
    """``tokens`` up to (not including) the first one in ``eos``."""
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(t)
    return out


def model_and_meta(path: Path, model_file: str, meta_file: str, presets: str, example: str) -> tuple[Path, dict]:
    """The program file ``model_file`` (``path`` itself, or inside the folder ``path``) and the JSON ``meta_file``
    its export wrote next to it; missing: ModelSourceError naming the presets that write them (``presets``, e.g.
    "a torchscript preset") and an ``example`` one."""
    import json

    path = Path(path)
    model = path if path.is_file() else path / model_file
    if not model.is_file():
        raise ModelSourceError(f"{path}: no {model_file}; export with {presets} "
                               f"(`edgeft export MODEL --out DIR --preset {example}`)")
    meta = model.parent / meta_file
    if not meta.is_file():
        raise ModelSourceError(f"{model.parent}: no {meta_file} next to {model.name}; keep the files the export wrote")
    return model, json.loads(meta.read_text())


def runtime_class(fmt: str, where: Path | str = "") -> type[CausalLM]:
    """The runtime class registered for ``fmt`` (its module is imported now); unknown formats list the valid ones."""
    if fmt not in RUNTIMES:
        prefix = f"{where}: " if where else ""
        raise ModelSourceError(f"{prefix}no runtime for format {fmt!r} (supported: {', '.join(sorted(RUNTIMES))})")
    module, _, cls = RUNTIMES[fmt].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_lm(path: Path, fmt: str, threads: int = 1) -> CausalLM:
    """Open the artifact at ``path`` (format ``fmt``) with its runtime, ``threads`` CPU threads."""
    return runtime_class(fmt, path)(path, threads)
