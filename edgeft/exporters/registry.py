"""The exporter registry: preset ``format`` name -> export function ``fn(model_dir, out_dir, opset=, with_past=, ...)``.

Each exporter module registers itself here (``@EXPORTERS.register("onnx")``); importing
:mod:`edgeft.exporters` imports them all, so ``edgeft.exporters.EXPORTERS`` holds every format.
"""

from __future__ import annotations

from typing import Callable

from edgeft.registry import Registry

EXPORTERS: Registry[Callable[..., dict]] = Registry("exporter")
