"""Run an ONNX encoder (BERT/MiniLM-style feature extractor) for latency: one forward pass per inference.

An encoder graph takes ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` (all
[batch, seq] integer tensors) and has no ``past_key_values.*`` inputs. Inputs are synthetic and
deterministic (token ids 100, 101, ..., no padding), so only the shape matters to the timing.
:class:`OrtEncoder` and :func:`encoder_feeds` are in :mod:`edgeft.runtime.ortcore` (shared with the
device runner); the graph inspection here needs the ``onnx`` package.
"""

from __future__ import annotations

from pathlib import Path

from edgeft.errors import ModelSourceError
from edgeft.runtime.ortcore import ENCODER_INPUTS, OrtEncoder, encoder_feeds, find_onnx

__all__ = ["ENCODER_INPUTS", "OrtEncoder", "encoder_feeds", "graph_input_names", "is_encoder"]


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
