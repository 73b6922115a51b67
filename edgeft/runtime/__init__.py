"""Load and run artifacts (ONNX Runtime sessions, PyTorch); shared by validate and benchmarks.

:mod:`edgeft.runtime.base` holds the interface and the format registry (``RUNTIMES``, ``load_lm``);
each runtime module implements one format. runtime/ imports nothing from the layers above it.
"""

from edgeft.runtime.base import RUNTIMES, CausalLM, load_lm
from edgeft.runtime.lm import OrtLM, TorchLM

__all__ = ["CausalLM", "OrtLM", "RUNTIMES", "TorchLM", "load_lm"]
