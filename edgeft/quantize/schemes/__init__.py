"""Quantization schemes, one module each, registered by name in ``edgeft.quantize.SCHEMES``."""
