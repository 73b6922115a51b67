"""The format -> runtime registry: lazy, complete, and unknown formats list the valid ones."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

from edgeft.errors import ModelSourceError
from edgeft.runtime.base import RUNTIMES, CausalLM, load_lm, runtime_class


@pytest.mark.parametrize("fmt", sorted(RUNTIMES))
def test_every_registered_format_names_a_causal_lm_taking_path_and_threads(fmt):
    cls = runtime_class(fmt)
    assert issubclass(cls, CausalLM), cls
    params = list(inspect.signature(cls.__init__).parameters)
    assert params[:3] == ["self", params[1], "threads"] and params[1] in ("path", "path_or_model"), params


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ModelSourceError) as ei:
        load_lm(tmp_path, "onxx", 1)
    msg = str(ei.value)
    assert msg.startswith(f"{tmp_path}: no runtime for format 'onxx'")
    assert f"supported: {', '.join(sorted(RUNTIMES))}" in msg and "\n" not in msg


def test_lm_module_still_exports_load_lm():
    from edgeft.runtime import lm

    assert lm.load_lm is load_lm


def test_loading_onnx_imports_no_other_runtime(tiny_lm_dir, tmp_path):
    """The registry holds strings: opening an ONNX graph imports neither torch nor the other runtimes."""
    from edgeft.exporters.onnx import export_onnx

    export_onnx(tiny_lm_dir, tmp_path / "onnx", opset=18)
    code = ("import sys; from edgeft.runtime.base import load_lm; lm = load_lm(sys.argv[1], 'onnx', 1); "
            "print(type(lm).__name__, sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('edgeft.runtime.', 'edgeft.exporters'))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "onnx")], capture_output=True, text=True,
                         timeout=120, env=env, check=True).stdout.strip()
    assert out == "OrtLM ['edgeft.runtime.base', 'edgeft.runtime.lm', 'edgeft.runtime.ortcore']", out
