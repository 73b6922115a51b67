"""Make a stage sub-package callable as its stage function.

The public API names the stages ``edgeft.finetune``, ``edgeft.merge``, ``edgeft.quantize`` and
``edgeft.validate``, and the layout has sub-packages of the same names. Once a sub-package is
imported, Python binds the module to that attribute of ``edgeft``, shadowing the function; a
module whose class defines ``__call__`` serves both uses: ``edgeft.quantize(...)`` runs the stage
and ``edgeft.quantize.SCHEMES`` still reaches the registry.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    module = sys.modules[module_name]

    class _StageModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    _StageModule.__name__ = f"StageModule[{function_name}]"
    module.__class__ = _StageModule
