"""Run TorchScript artifacts written by :mod:`edgeft.exporters.torchscript` (decoder LM or encoder).

The decoder's ``model.pt`` owns a static KV cache of ``max_cache_len`` slots (batch 1) and has
two methods: ``prefill(input_ids [1, n], cache_position [n])`` and ``forward`` (one token);
both return ``(logits, key_0, value_0, ...)``. Positions are absolute, so a new sequence simply
starts again at position 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError
from edgeft.runtime.base import SingleSequenceLM, greedy_decode, model_and_meta

MODEL_FILE = "model.pt"
META_FILE = "torchscript.json"


def _paths(path: Path) -> tuple[Path, dict]:
    return model_and_meta(path, MODEL_FILE, META_FILE, "a torchscript preset", "torchscript")


class TorchScriptLM(SingleSequenceLM):
    """A traced decoder with a static KV cache (``edgeft.exporters.torchscript``), greedy decoding."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.path, self.meta = _paths(path)
        if self.meta.get("kind") != "causal-lm":
            raise ModelSourceError(f"{self.path}: a TorchScript {self.meta.get('kind')} model, not a causal LM")
        self.name = str(path)
        self.max_len = int(self.meta["max_cache_len"])
        self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        self._warm_up()

    def _warm_up(self) -> None:
        """TorchScript's profiling executor records the first two calls of each method and optimizes the
        graph on the third; run them here so the first real prefill/decode is not a profiling run."""
        import torch

        with torch.inference_mode():
            for _ in range(2):
                self._prefill([0, 1, 2, 3])
                self._step(0, 4)

    def _check_len(self, n: int) -> None:
        if n > self.max_len:
            raise ModelSourceError(f"{self.path}: {n} tokens do not fit the exported KV cache of {self.max_len}; "
                                   "re-export with a larger max_cache_len (option of the torchscript export preset and of "
                                   "the torch-dynamic-int8 scheme)")

    def _prefill(self, ids: Sequence[int]):
        import torch

        t = torch.as_tensor(np.asarray(ids, np.int64))[None, :]
        self._check_len(t.shape[1])
        return self.module.prefill(t, torch.arange(t.shape[1]))[0]

    def _step(self, token: int, pos: int):
        import torch

        return self.module(torch.tensor([[token]], dtype=torch.long), torch.tensor([pos], dtype=torch.long))[0]

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        import torch

        self._check_len(len(prompt) + new_tokens)
        pos = [len(prompt)]

        def step(token: int):
            row = self._step(token, pos[0])[0, -1]
            pos[0] += 1
            return row

        with torch.inference_mode():
            return greedy_decode(lambda: self._prefill(prompt)[0, -1], step, new_tokens, eos)

    def logits(self, input_ids):
        import torch

        with torch.inference_mode():
            return self._prefill(input_ids)[0].float().numpy().copy()


class TorchScriptEncoder:
    """A traced encoder or classifier: ``(input_ids, attention_mask)`` -> last_hidden_state or logits."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.path, self.meta = _paths(path)
        if self.meta.get("kind") not in ("encoder", "classifier"):
            raise ModelSourceError(f"{self.path}: a TorchScript {self.meta.get('kind')} model, not an encoder")
        self.module = torch.jit.load(str(self.path), map_location="cpu").eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.as_tensor(np.asarray(input_ids, np.int64)),
                              torch.as_tensor(np.asarray(attention_mask, np.int64)))
        return out[0].float().numpy()
