"""Run a LiteRT (.tflite) classifier or encoder bundle written by :mod:`edgeft.exporters.litert`.

A bundle folder holds ``model.tflite``, the tokenizer and config, ``litert.json`` (task, sequence
length, graph input kind) and, when the embeddings were taken out of the graph, the lookup table
``embeddings.safetensors``. The graph runs one row of ``seq`` tokens at a time; int8 inputs are
quantized and int8 outputs dequantized with the scale / zero point in the interpreter's tensor
details.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError, UnsupportedError
from edgeft.runtime.base import SingleSequenceLM, greedy_decode

MODEL_FILE = "model.tflite"
META_FILE = "litert.json"
EXTRA_HINT = "pip install 'edgeft[litert]'"


def require(what: str = "LiteRT export", run_only: bool = False) -> None:
    """Import check for the ``litert`` extra: one line naming it when a package is missing.

    ``run_only``: only the interpreter (``ai_edge_litert``) is needed; the converter and quantizer
    pull in torch, which would count against a latency run's peak memory.
    """
    import importlib

    mods = ["ai_edge_litert.interpreter"] + ([] if run_only else ["ai_edge_quantizer", "litert_torch"])
    try:
        for m in mods:
            importlib.import_module(m)
    except ImportError as e:
        raise UnsupportedError(f"{what} needs the litert extra ({e.name} is missing): {EXTRA_HINT}") from e


def encode_rows(tokenizer, texts: Sequence[str], seq: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32, mask float32), each [n, seq]: texts cut and right-padded to ``seq`` tokens."""
    enc = tokenizer(list(texts), truncation=True, max_length=seq, padding="max_length", return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.float32)


def lookup(table: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Float embedding sum [n, seq, hidden] for token ids [n, seq] (what the graph's first op would compute)."""
    return (table["word"][ids].astype(np.float32) + table["position_type"][None, :ids.shape[1]].astype(np.float32))


def is_litert(path: Path) -> bool:
    """True for a ``.tflite`` file or a folder holding ``model.tflite``."""
    p = Path(path)
    return p.suffix == ".tflite" if p.is_file() else (p / MODEL_FILE).is_file()


def _interpreter(path: Path, threads: int):
    require("running a LiteRT model", run_only=True)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=int(threads))
    it.allocate_tensors()
    return it


def _to_input(x: np.ndarray, d: dict) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    scale, zero = d["quantization"]
    if dtype in (np.int8, np.uint8) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _from_output(y: np.ndarray, d: dict) -> np.ndarray:
    scale, zero = d["quantization"]
    if np.dtype(d["dtype"]) in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


class LiteRTModel:
    """One interpreter over ``model.tflite`` (a file, or a bundle folder with its ``litert.json``)."""

    def __init__(self, path: Path, threads: int = 1, table: dict | None = None) -> None:
        p = Path(path)
        self.folder = p.parent if p.is_file() else p
        self.model_path = p if p.is_file() else p / MODEL_FILE
        if not self.model_path.is_file():
            raise ModelSourceError(f"{p}: no {MODEL_FILE}; export with a litert-* preset")
        meta_file = self.folder / META_FILE
        self.meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.it = _interpreter(self.model_path, threads)
        ins = self.it.get_input_details()
        # x (token ids or their embedding sum) first, the 1 x seq mask second
        self.inputs = sorted(ins, key=lambda d: "attention_mask" in d["name"])
        self.output = self.it.get_output_details()[0]
        self.seq = int(self.inputs[0]["shape"][1])
        self.table = table
        if self.table is None and self.meta.get("embeddings_file"):
            from safetensors.numpy import load_file

            self.table = load_file(str(self.folder / self.meta["embeddings_file"]))

    @property
    def takes_embeddings(self) -> bool:
        return len(self.inputs[0]["shape"]) == 3

    def run(self, xs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Float outputs for rows of graph inputs (ids or embeddings [n, seq(, hidden)], mask [n, seq])."""
        out = []
        for i in range(len(xs)):
            self.it.set_tensor(self.inputs[0]["index"], _to_input(xs[i:i + 1], self.inputs[0]))
            self.it.set_tensor(self.inputs[1]["index"], _to_input(mask[i:i + 1], self.inputs[1]))
            self.it.invoke()
            out.append(_from_output(self.it.get_tensor(self.output["index"]), self.output))
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def rows(self, tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Graph inputs for ``texts``: tokenized to the graph's length, looked up when the table is outside."""
        ids, mask = encode_rows(tokenizer, texts, self.seq)
        if self.takes_embeddings:
            if self.table is None:
                raise ModelSourceError(f"{self.folder}: the graph takes embeddings but the bundle has no table "
                                       "(embeddings.safetensors)")
            return lookup(self.table, ids), mask
        return ids, mask

    def logits(self, tokenizer, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Logits per text; texts are cut at the graph's fixed length (a ``max_length`` above it cannot apply)."""
        if max_length is not None and max_length < self.seq:
            raise ValueError(f"{self.model_path}: the graph's length is {self.seq} tokens; max_length {max_length} "
                             "would change what it sees")
        return self.run(*self.rows(tokenizer, texts))

    def embeddings(self, tokenizer, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled (under the mask), L2-normalized last hidden state per text."""
        xs, mask = self.rows(tokenizer, texts)
        hidden = self.run(xs, mask)
        m = mask[..., None]
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def timed_inference(self) -> float:
        """Seconds for one invoke on a synthetic full-length row (inputs set outside the timing)."""
        for d in self.inputs:
            self.it.set_tensor(d["index"], np.ones(d["shape"], np.dtype(d["dtype"])))
        t0 = time.perf_counter()
        self.it.invoke()
        return time.perf_counter() - t0


def logits(path: Path, tokenizer, texts: Sequence[str], max_length: int | None = None, threads: int = 1) -> np.ndarray:
    """Logits of a LiteRT classifier; texts are cut at the graph's own length (``max_length`` cannot change it)."""
    m = LiteRTModel(path, threads)
    return m.logits(tokenizer, texts, max_length if max_length is not None and max_length < m.seq else None)


def embeddings(path: Path, tokenizer, texts: Sequence[str], threads: int = 1) -> np.ndarray:
    return LiteRTModel(path, threads).embeddings(tokenizer, texts)


def graph_seq(path: Path) -> int:
    """The graph's fixed sequence length."""
    return LiteRTModel(path, 1).seq


class LiteRTLM(SingleSequenceLM):
    """A LiteRT causal LM (:mod:`edgeft.exporters.litert_lm`): ``prefill_<P>`` and ``decode`` signatures whose
    K/V caches are inputs and outputs, carried here from call to call (one sequence at a time).

    A prompt runs through ``prefill`` in chunks of ``P`` positions; the last chunk is right-padded, which
    writes K/V for positions after the prompt that every later decode step overwrites before any query
    can attend to it (the causal mask hides later slots). A chunk whose padding would run past the cache
    runs token by token through ``decode`` instead. Greedy decoding through :func:`greedy_decode`.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        p = Path(path)
        self.folder = p.parent if p.is_file() else p
        self.model_path = p if p.is_file() else p / MODEL_FILE
        meta_file = self.folder / META_FILE
        if not self.model_path.is_file() or not meta_file.is_file():
            raise ModelSourceError(f"{p}: no {MODEL_FILE} with its {META_FILE}; export the causal LM with a litert "
                                   "preset (`edgeft export MODEL --out DIR --preset litert-lm-int8`)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("task") != "causal-lm":
            raise ModelSourceError(f"{p}: a LiteRT {self.meta.get('task')} graph, not a causal LM")
        self.name, self.threads, self.threads_source = str(path), int(threads or 1), "set"
        self.it = _interpreter(self.model_path, self.threads)
        sigs = self.meta["signatures"]
        self.prefill = self.it.get_signature_runner(sigs["prefill"])
        self.decode = self.it.get_signature_runner(sigs["decode"])
        self.P, self.max_len = int(self.meta["prefill_seq_len"]), int(self.meta["kv_cache_max_len"])
        details = self.decode.get_input_details()
        self.kv_spec = {k: (tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"])) for k, d in details.items()
                        if k.startswith("kv_cache")}
        self.kv = self._empty_cache()

    def _empty_cache(self) -> dict:
        return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.kv_spec.items()}

    def _check_len(self, n: int) -> None:
        if n > self.max_len:
            raise ModelSourceError(f"{self.model_path}: {n} tokens do not fit the exported KV cache of {self.max_len}; "
                                   "re-export with a larger options.kv_cache_max_len")

    def _call(self, runner, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        out = runner(tokens=tokens.astype(np.int32), input_pos=pos.astype(np.int32), **self.kv)
        self.kv = {k: out[k] for k in self.kv_spec}
        return out["logits"][0].astype(np.float32)

    def _run(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Logits [n, vocab] for ``ids`` at positions ``start..start+n-1`` (the cache holds what came before)."""
        ids = [int(t) for t in ids]
        self._check_len(start + len(ids))
        rows, i = [], 0
        while i < len(ids):
            chunk = ids[i:i + self.P]
            pos0 = start + i
            if len(chunk) > 1 and pos0 + self.P <= self.max_len:
                toks = np.zeros((1, self.P), np.int32)
                toks[0, :len(chunk)] = chunk
                rows.append(self._call(self.prefill, toks, np.arange(pos0, pos0 + self.P))[:len(chunk)])
            else:  # one token, or a padded chunk would run past the cache
                for j, t in enumerate(chunk):
                    rows.append(self._call(self.decode, np.array([[t]]), np.array([pos0 + j]))[-1:])
            i += len(chunk)
        return np.concatenate(rows)

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        self._check_len(len(prompt) + new_tokens)
        pos = [len(prompt)]

        def step(token: int) -> np.ndarray:
            row = self._call(self.decode, np.array([[token]]), np.array([pos[0]]))[-1]
            pos[0] += 1
            return row

        return greedy_decode(lambda: self._run(list(prompt), 0)[-1], step, new_tokens, eos)

    def logits(self, input_ids):
        ids = [int(t) for t in np.asarray(input_ids).tolist()]
        return self._run(ids, 0)
