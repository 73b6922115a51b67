"""Run an ONNX encoder (BERT/MiniLM-style feature extractor): synthetic inputs for latency, real texts for serving.

An encoder graph takes ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` (all
[batch, seq] integer tensors) and has no ``past_key_values.*`` inputs. Inputs are synthetic and
deterministic (token ids 100, 101, ..., no padding), so only the shape matters to the timing.
:class:`TextEncoder` runs real texts (``edgeft serve``'s classify and embeddings endpoints). :class:`OrtEncoder` and :func:`encoder_feeds` are in :mod:`edgeft.runtime.ortcore` (shared with the
device runner); the graph inspection here needs the ``onnx`` package.
"""

from __future__ import annotations

from pathlib import Path

from edgeft.errors import ModelSourceError
from edgeft.runtime.ortcore import ENCODER_INPUTS, OrtEncoder, encoder_feeds, find_onnx

__all__ = ["ENCODER_INPUTS", "OrtEncoder", "TextEncoder", "encoder_feeds", "graph_input_names", "is_encoder",
           "label_names"]


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


class TextEncoder:
    """An ONNX encoder or sequence classifier run on real texts: one session, held for every call.

    ``__call__(texts)`` returns the classifier's logits [n, labels] when the graph has a ``logits`` output,
    else the mean-pooled last hidden state, L2-normalized [n, hidden] (as validate scores encoders). Texts are
    cut at ``max_length`` tokens, or padded/cut to the graph's own length when its input shape is fixed. A
    session may be called from several threads at once.
    """

    def __init__(self, path: Path, tokenizer, threads: int = 1, max_length: int = 128) -> None:
        from edgeft.runtime.ortcore import cpu_session

        self.path = find_onnx(Path(path))
        self.name = str(path)
        self.threads = threads
        self.tokenizer = tokenizer
        self.sess = cpu_session(self.path, threads)
        self.inputs = {i.name: i.shape for i in self.sess.get_inputs()}
        if "input_ids" not in self.inputs or any(n.startswith("past_key_values") for n in self.inputs):
            raise ModelSourceError(f"{self.path}: not an encoder graph (needs input_ids and no KV-cache inputs)")
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.classifier = "logits" in self.outputs
        shape = self.inputs["input_ids"]
        self.fixed = tuple(shape) if len(shape) == 2 and all(isinstance(d, int) for d in shape) else None
        self.max_length = self.fixed[1] if self.fixed else max_length

    def token_counts(self, texts) -> list[int]:
        """Tokens per text as the graph sees them (special tokens included, after truncation)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def __call__(self, texts) -> "np.ndarray":
        import numpy as np

        texts = [str(t) for t in texts]
        batch = self.fixed[0] if self.fixed else max(len(texts), 1)
        out = []
        for i in range(0, len(texts), batch):
            chunk = texts[i:i + batch]
            n = len(chunk)
            if self.fixed and n < batch:
                chunk += [""] * (batch - n)
            enc = self.tokenizer(chunk, truncation=True, max_length=self.max_length, return_tensors="np",
                                 padding="max_length" if self.fixed else True)
            feeds = {k: enc[k].astype(np.int64) for k in self.inputs if k in enc}
            if "token_type_ids" in self.inputs and "token_type_ids" not in feeds:
                feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            if self.classifier:
                out.append(self.sess.run(["logits"], feeds)[0][:n].astype(np.float32))
                continue
            hidden = self.sess.run([self.outputs[0]], feeds)[0][:n]
            mask = feeds["attention_mask"][:n].astype(np.float32) if "attention_mask" in feeds else np.ones(
                hidden.shape[:2], np.float32)
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
            out.append((pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def label_names(*folders: Path) -> list[str]:
    """A classifier's labels in logit order, from the first ``config.json`` among ``folders`` with ``id2label``."""
    import json

    for d in folders:
        f = Path(d) / "config.json"
        if f.is_file():
            id2label = json.loads(f.read_text()).get("id2label") or {}
            if id2label:
                return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return []
