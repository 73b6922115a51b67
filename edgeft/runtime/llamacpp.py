"""GGUF artifacts run by llama.cpp (llama-cpp-python), behind :class:`edgeft.runtime.base.CausalLM`.

The loop is the same as :class:`~edgeft.runtime.lm.OrtLM`'s: evaluate the prompt, argmax the last
logits row in numpy, feed the token back. ``logits_all=True`` (needed by :meth:`LlamaCppLM.logits`
for perplexity) makes llama.cpp compute and copy a logits row for every prompt token, so
generation uses a context opened without it and ``logits`` opens a second one on first use (the
weights are memory-mapped once and shared).

``lookahead=k`` (> 0) decodes with prompt-lookup speculation, llama-cpp-python's own option
(``LlamaPromptLookupDecoding``) run through edgeft's loop (:func:`~edgeft.runtime.ortcore.lookup_decode`): up
to ``k`` tokens copied from earlier in the prompt or output are verified in one ``eval``. As in
llama-cpp-python's speculative path, that context keeps a logits row per evaluated token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError, UnsupportedError, optional_import
from edgeft.runtime.base import CausalLM, greedy_decode


def gguf_file(path: Path) -> Path:
    """The .gguf file itself, or the only one in a folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise ModelSourceError(f"{path}: expected one .gguf file in this folder, found {len(found)}")
    return found[0]


def _llama_cls():
    return optional_import("llama_cpp", "running a GGUF artifact needs llama-cpp-python: pip install 'edgeft[bench]' "
                                        "(or pip install llama-cpp-python)").Llama


class LlamaCppLM(CausalLM):
    """A .gguf file (or a folder with one) run by llama.cpp on the CPU."""

    def __init__(self, path: Path, threads: int = 1, n_ctx: int = 2048, logits_all: bool = True,
                 lookahead: int = 0) -> None:
        self.path = gguf_file(Path(path))
        self.name = str(path)
        self.threads = threads
        self.logits_all = logits_all
        self.n_ctx = n_ctx
        self.lookahead = int(lookahead)
        self.llm = self._open(self.lookahead > 0)  # speculation reads a row per drafted token
        self._scorer = None

    def _open(self, logits_all: bool):
        Llama = _llama_cls()
        return Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_batch=min(self.n_ctx, 512),
                     n_threads=self.threads, n_threads_batch=self.threads, logits_all=logits_all, verbose=False)

    def _last_row(self) -> np.ndarray:
        # Without logits_all, llama-cpp-python (0.3) leaves its `scores` copy empty and keeps the one
        # output row in the context: read it there, zero-copy (the C API's llama_get_logits).
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(self.llm.n_vocab(),))

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        if not self.logits_all:
            raise UnsupportedError(f"{self.path}: opened with logits_all=False (latency only); per-position "
                                   "logits need LlamaCppLM(..., logits_all=True)")
        ids = [int(t) for t in np.asarray(input_ids).tolist()]
        if len(ids) > self.n_ctx:
            raise UnsupportedError(f"{self.path}: {len(ids)} tokens exceed n_ctx={self.n_ctx}; "
                                   "open with a larger n_ctx")
        if self._scorer is None:
            self._scorer = self._open(True)
        self._scorer.reset()
        self._scorer.eval(ids)
        return np.array(self._scorer.scores[:len(ids)], dtype=np.float32)

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        self.llm.reset()
        if self.lookahead > 0:
            from edgeft.runtime.ortcore import lookup_decode

            def rows(tokens: list[int]) -> np.ndarray:
                start = self.llm.n_tokens
                self.llm.eval(tokens)
                return self.llm.scores[start:start + len(tokens)]

            def drop(n: int) -> None:  # the next eval removes the cache entries past n_tokens
                self.llm.n_tokens -= n

            ids = [int(t) for t in prompt]
            tokens, ttft, steps, self.last_stats = lookup_decode(lambda: rows(ids)[-1], rows, drop, ids, new_tokens,
                                                                 eos, self.lookahead)
            return tokens, ttft, steps

        def feed(tokens: list[int]) -> np.ndarray:
            self.llm.eval(tokens)
            return self._last_row()

        return greedy_decode(lambda: feed([int(t) for t in prompt]), lambda token: feed([token]), new_tokens, eos)

    def generate(self, prompts, max_new_tokens, eos_ids):
        eos = set(int(e) for e in eos_ids)
        return [self._decode(p, max_new_tokens, eos)[0] for p in prompts]

    def timed_generate(self, prompt, new_tokens):
        _, ttft, steps = self._decode(prompt, new_tokens, None)
        return ttft, steps
