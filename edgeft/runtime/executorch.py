"""Run ExecuTorch programs (``model.pte``) written by :mod:`edgeft.exporters.executorch`.

Loaded with ``executorch.runtime`` (``Runtime.get().load_program(...)``, the Python bindings of the
same C++ runtime an app links); the XNNPACK delegate runs the lowered parts of the graph.

Causal LM (:class:`ExecuTorchLM`): the static KV cache lives in the program's mutable buffers, so
it persists between calls. The mask hides every slot after the last position, so a new sequence
starts again at position 0 without a reset. At most ``max_cache_len`` tokens per sequence. Two
layouts, told apart by ``executorch.json``:

- ``shapes: static`` (the default export): ``forward(input_ids [1, 1], cache_position [1])`` for a
  decode step and ``prefill(input_ids [1, C], cache_position [C])`` (``prefill_chunk`` C), two
  methods of one program sharing the cache buffers. A prompt goes through ``prefill`` C tokens at a
  time; the last partial chunk is right-padded, which writes K/V for the padding at the slots after
  the prompt: harmless, since every later call writes its own positions before attending and the
  causal mask hides the slots after them. When the padded chunk would run past ``max_cache_len``
  the tail goes through ``forward`` one token at a time. Only the real tokens' logits are returned.
- ``shapes: dynamic`` (or no ``shapes`` key: files written before the static layout): one
  ``forward(input_ids [1, n], cache_position [n])`` taking the whole prompt, then one token per step.

Classifier (:class:`ExecuTorchClassifier`): ``forward(input_ids [1, seq], attention_mask [1, seq])``
-> logits, one text at a time, padded to the exported static ``seq``.

Threads: ``threads`` resets ExecuTorch's shared threadpool (XNNPACK and the optimized CPU kernels
use it) with the bindings' ``_unsafe_reset_threadpool``; it is process-wide, so the last runner
created sets it. When the bindings lack it, the pool keeps its default size (one thread per core)
and ``threads`` reports that count (``threads_source``: "default").

Quantized programs call ``quantized_decomposed::embedding_byte`` (the int8 token embedding);
``import executorch.kernels.quantized`` registers those kernels with the runtime (an app links
executorch's quantized kernel library for the same reason).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError, UnsupportedError
from edgeft.runtime.base import SingleSequenceLM, greedy_decode, model_and_meta

log = logging.getLogger(__name__)

MODEL_FILE = "model.pte"
META_FILE = "executorch.json"
EXTRA = "pip install 'edgeft[executorch]'"


def import_runtime():
    """``executorch.runtime.Runtime`` with the quantized kernels registered; one-line error when missing."""
    try:
        import executorch.kernels.quantized  # noqa: F401  (registers embedding_byte & co. with the runtime)
        from executorch.runtime import Runtime
    except ImportError as e:
        raise UnsupportedError(f"running a .pte artifact needs ExecuTorch: {EXTRA} ({e})") from e
    return Runtime


def set_threads(threads: int | None) -> tuple[int, str]:
    """Size ExecuTorch's threadpool; returns (thread count in use, "set" | "default")."""
    try:
        from executorch.extension.pybindings import portable_lib as pl
    except ImportError as e:
        raise UnsupportedError(f"running a .pte artifact needs ExecuTorch: {EXTRA} ({e})") from e
    reset = getattr(pl, "_unsafe_reset_threadpool", None)
    count = getattr(pl, "_threadpool_get_thread_count", None)
    if threads and reset is not None:
        reset(int(threads))
        return (int(count()) if count else int(threads)), "set"
    n = int(count()) if count else 0
    if threads:
        log.warning("executorch bindings cannot resize the threadpool: running at its default %d threads", n)
    return n, "default"


def pte_paths(path: Path) -> tuple[Path, dict]:
    """``model.pte`` (the file, or inside the folder) and the ``executorch.json`` written next to it."""
    return model_and_meta(path, MODEL_FILE, META_FILE, "an executorch preset", "executorch-8da4w")


def _load_methods(model: Path, names: Sequence[str] = ("forward",)) -> dict:
    """``{name: loaded method}`` from one loaded program (so methods share the program's mutable buffers)."""
    Runtime = import_runtime()
    program = Runtime.get().load_program(model)
    have = set(program.method_names)
    missing = [n for n in names if n not in have]
    if missing:
        raise ModelSourceError(f"{model}: the program has no method {', '.join(missing)} (it has "
                               f"{', '.join(sorted(have))}) although {META_FILE} lists it; re-export the folder")
    return {n: program.load_method(n) for n in names}


def _load_method(model: Path):
    return _load_methods(model)["forward"]


def decoder_layout(path: Path, meta: dict) -> tuple[str, int | None]:
    """(``"static"`` | ``"dynamic"``, prefill chunk or None) from a causal LM's ``executorch.json``; a layout this
    runtime does not know fails in one line."""
    shapes = meta.get("shapes", "dynamic")  # files from before the static layout: one dynamic forward
    methods = list(meta.get("methods") or ["forward"])
    if shapes == "dynamic" and methods == ["forward"]:
        return "dynamic", None
    chunk = meta.get("prefill_chunk")
    if shapes == "static" and sorted(methods) == ["forward", "prefill"] and isinstance(chunk, int) \
            and 1 < chunk < int(meta["max_cache_len"]):
        return "static", chunk
    raise ModelSourceError(f"{path}: {META_FILE} describes an unknown program layout (shapes {shapes!r}, methods "
                           f"{methods}, prefill_chunk {chunk!r}); re-export it with this version of edgeft")


class ExecuTorchLM(SingleSequenceLM):
    """A lowered decoder with a static KV cache, greedy decoding through :func:`greedy_decode`."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.meta = pte_paths(path)
        if self.meta.get("kind") != "causal-lm":
            raise ModelSourceError(f"{self.path}: an ExecuTorch {self.meta.get('kind')} program, not a causal LM")
        self.name = str(path)
        self.threads, self.threads_source = set_threads(threads)
        self.max_len = int(self.meta["max_cache_len"])
        self.shapes, self.chunk = decoder_layout(self.path, self.meta)
        self.methods = _load_methods(self.path, ("forward", "prefill") if self.shapes == "static" else ("forward",))
        self.method = self.methods["forward"]

    def _check_len(self, n: int) -> None:
        if n > self.max_len:
            raise ModelSourceError(f"{self.path}: {n} tokens do not fit the exported KV cache of {self.max_len}; "
                                   "re-export with a larger max_cache_len (option of the executorch presets)")

    def _run(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Logits [n, vocab] for ``ids`` at positions ``start..start+n-1`` (the cache holds what came before)."""
        import torch

        ids = np.asarray(ids, np.int64).reshape(-1)
        n = len(ids)
        self._check_len(start + n)

        def call(method, chunk: np.ndarray, pos: int) -> np.ndarray:
            t = torch.as_tensor(chunk)[None, :]
            return method.execute((t, torch.arange(pos, pos + len(chunk), dtype=torch.long)))[0][0].numpy()

        if self.shapes == "dynamic":
            return call(self.method, ids, start)
        C, rows, i = self.chunk, [], 0
        while i < n:
            k = min(C, n - i)
            if k == 1:
                rows.append(call(self.method, ids[i:i + 1], start + i))
            elif start + i + C <= self.max_len:  # full chunk, or a right-padded tail that still fits the cache
                padded = np.concatenate([ids[i:i + k], np.full(C - k, ids[i + k - 1], np.int64)])
                rows.append(call(self.methods["prefill"], padded, start + i)[:k])
            else:  # the padded tail would pass max_cache_len: one token at a time
                rows.extend(call(self.method, ids[j:j + 1], start + j) for j in range(i, i + k))
            i += k
        return np.concatenate(rows)

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        self._check_len(len(prompt) + new_tokens)
        pos = [len(prompt)]

        def step(token: int) -> np.ndarray:
            row = self._run([token], pos[0])[-1]
            pos[0] += 1
            return row

        return greedy_decode(lambda: self._run(list(prompt), 0)[-1], step, new_tokens, eos)

    def logits(self, input_ids):
        ids = [int(t) for t in np.asarray(input_ids).tolist()]
        self._check_len(len(ids))
        return self._run(ids, 0).astype(np.float32)


class ExecuTorchClassifier:
    """A lowered sequence classifier with a static ``1 x seq`` input."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.meta = pte_paths(path)
        if self.meta.get("kind") != "classifier":
            raise ModelSourceError(f"{self.path}: an ExecuTorch {self.meta.get('kind')} program, not a classifier")
        self.threads, self.threads_source = set_threads(threads)
        self.seq = int(self.meta["seq_len"])
        self.method = _load_method(self.path)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits [1, labels] for one row of ``seq`` token ids and its mask."""
        import torch

        ids = torch.as_tensor(np.asarray(input_ids, np.int64)).reshape(1, self.seq)
        mask = torch.as_tensor(np.asarray(attention_mask, np.int64)).reshape(1, self.seq)
        return self.method.execute((ids, mask))[0].numpy()

    def logits(self, tokenizer, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Logits [n, labels]; every text cut or padded to the program's ``seq`` (``max_length`` above it is
        refused: the input shape is fixed at export)."""
        if max_length is not None and max_length > self.seq:
            raise UnsupportedError(f"{self.path}: texts of {max_length} tokens do not fit the static input of "
                                   f"{self.seq}; re-export with export.static_shapes.seq >= {max_length}")
        rows = []
        for text in texts:
            enc = tokenizer([str(text)], truncation=True, max_length=self.seq, padding="max_length",
                            return_tensors="np")
            rows.append(self(enc["input_ids"], enc["attention_mask"]))
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def timed_inference(self, batch: int = 1, seq: int | None = None) -> float:
        """Seconds for one forward pass of a 1 x seq row (the exported shape; ``batch`` must be 1)."""
        import time

        if batch != 1 or (seq is not None and seq != self.seq):
            raise UnsupportedError(f"{self.path}: the program's input is fixed at 1 x {self.seq} "
                                   f"(asked for {batch} x {seq})")
        ids = np.full((1, self.seq), 1, np.int64)
        mask = np.ones((1, self.seq), np.int64)
        t0 = time.perf_counter()
        self(ids, mask)
        return time.perf_counter() - t0
