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
