"""Load and run artifacts (ONNX Runtime sessions, PyTorch); shared by validate and benchmarks."""

from edgeft.runtime.lm import CausalLM, OrtLM, TorchLM, load_lm

__all__ = ["CausalLM", "OrtLM", "TorchLM", "load_lm"]
