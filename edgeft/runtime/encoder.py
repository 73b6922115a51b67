"""Run an ONNX encoder (BERT/MiniLM-style feature extractor) for latency: one forward pass per inference.

An encoder graph takes ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` (all
[batch, seq] integer tensors) and has no ``past_key_values.*`` inputs. Inputs are synthetic and
deterministic (token ids 100, 101, ..., no padding), so only the shape matters to the timing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeft.errors import ModelSourceError
from edgeft.runtime.lm import find_onnx, session_options

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def graph_input_names(path: Path) -> list[str]:
    """Names of the real graph inputs (initializers that older exporters list as inputs are left out)."""
    import onnx

    proto = onnx.load(str(find_onnx(path)), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def is_encoder(path: Path) -> bool:
    """True when the ONNX graph at ``path`` (file or folder) has ``input_ids`` and no KV-cache inputs.

    False for a folder without any ``.onnx`` file (e.g. a PyTorch checkpoint).
    """
    try:
        names = graph_input_names(Path(path))
    except ModelSourceError:
        return False
    return "input_ids" in names and not any(n.startswith("past_key_values") for n in names)


def encoder_feeds(inputs: dict[str, str], batch: int, seq: int, where: Path | str = "graph") -> dict[str, np.ndarray]:
    """Synthetic feeds for ``inputs`` (name -> ORT type string): ids 100.. , mask ones, token types zeros."""
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1 (got batch={batch}, seq={seq})")
    feeds = {}
    for name, typ in inputs.items():
        if name not in ENCODER_INPUTS:
            raise ModelSourceError(f"{where}: input {name!r} is not an encoder input "
                                   f"(expected only {', '.join(ENCODER_INPUTS)}); is this an encoder graph?")
        dtype = _INT_TYPES.get(typ)
        if dtype is None:
            raise ModelSourceError(f"{where}: input {name!r} has type {typ}; expected tensor(int64) or tensor(int32)")
        if name == "input_ids":
            # 100..199 repeating: clear of the usual special-token ids and inside any real vocabulary
            arr = 100 + np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) % 100
        elif name == "attention_mask":
            arr = np.ones((batch, seq), np.int64)
        else:
            arr = np.zeros((batch, seq), np.int64)
        feeds[name] = arr.astype(dtype)
    if "input_ids" not in feeds:
        raise ModelSourceError(f"{where}: no input_ids input; not an encoder graph")
    return feeds


class OrtEncoder:
    """An encoder graph on ONNX Runtime's CPU provider with a fixed intra-op thread count."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = find_onnx(Path(path))
        self.name = str(path)
        self.threads = threads
        self.sess = ort.InferenceSession(str(self.path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.type for i in self.sess.get_inputs()}
        if any(n.startswith("past_key_values") for n in self.inputs):
            raise ModelSourceError(f"{self.path}: has past_key_values inputs; this is a decoder, not an encoder")
        encoder_feeds(self.inputs, 1, 1, self.path)  # name/type check up front
        self._feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def feeds(self, batch: int, seq: int) -> dict[str, np.ndarray]:
        key = (batch, seq)
        if key not in self._feeds:
            self._feeds[key] = encoder_feeds(self.inputs, batch, seq, self.path)
        return self._feeds[key]

    def run(self, batch: int, seq: int) -> list[np.ndarray]:
        return self.sess.run(None, self.feeds(batch, seq))

    def timed_inference(self, batch: int, seq: int) -> float:
        """Seconds for one forward pass over a [batch, seq] input (feeds are built outside the timing)."""
        feeds = self.feeds(batch, seq)
        t0 = time.perf_counter()
        self.sess.run(None, feeds)
        return time.perf_counter() - t0
