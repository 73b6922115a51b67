"""The old home of the causal-LM quality functions, kept only while ``quantize/schemes/auto.py`` imports it
(``from edgeft.quantize import quality``); they live in :mod:`edgeft.metrics.lm`. Remove once auto imports that."""

from edgeft.metrics.lm import compare, log_softmax, perplexity, windows

__all__ = ["compare", "log_softmax", "perplexity", "windows"]
