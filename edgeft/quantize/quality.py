"""Quality of a causal LM vs a reference; the code is :mod:`edgeft.runtime.quality` (exporters use it too)."""

from edgeft.runtime.quality import compare, log_softmax, perplexity, windows

__all__ = ["compare", "log_softmax", "perplexity", "windows"]
