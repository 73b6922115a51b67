"""The files shipped to a measured device are enough: the runner works from a folder holding only them, without edgeft.

Each test copies ``edgeft.validate.remote.shipped_files`` into a temp folder and runs
``remote_runner.py`` there with ``edgeft`` blocked from importing (the device has no edgeft), so a
missing module or an import of the package fails here rather than on the device. No sshd needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROMPT = [5, 17, 42, 99, 3]

# Runs remote_runner.py as the device does (a script, its folder first on sys.path), with edgeft unimportable.
_NO_EDGEFT = ("import runpy, sys; sys.modules['edgeft'] = None; sys.argv = ['remote_runner.py'] + sys.argv[1:]; "
              "runpy.run_path('remote_runner.py', run_name='__main__')")


@pytest.fixture(scope="module")
def tiny_onnx_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    from edgeft.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("runner-onnx") / "onnx"
    export_onnx(tiny_lm_dir, out, opset=18)
    return out


@pytest.fixture(scope="module")
def symbolic_head_dir(tiny_onnx_dir, tmp_path_factory) -> Path:
    """The same graph with the KV head size made symbolic, as some exporters leave it; config.json says it."""
    import onnx

    out = tmp_path_factory.mktemp("runner-symbolic")
    model = onnx.load(str(tiny_onnx_dir / "model.onnx"))
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name.startswith(("past_key_values", "present")):
            vi.type.tensor_type.shape.dim[3].dim_param = "head_size"
    onnx.save(model, str(out / "model.onnx"))
    shutil.copy(tiny_onnx_dir / "config.json", out / "config.json")
    return out


def _device(files: list[Path], where: Path) -> Path:
    where.mkdir()
    for f in files:
        shutil.copy(f, where / f.name)
    return where


def _run_on_device(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", _NO_EDGEFT, "--dir", str(folder), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def _lm_args(*extra: str) -> list[str]:
    return ["--prompt", json.dumps(PROMPT), "--new-tokens", "4", "--threads", "1", "--warmup", "0",
            "--repeats", "2", *extra]


def test_shipped_files_are_the_graph_its_config_the_runner_and_ortcore(tiny_onnx_dir):
    from edgeft.validate.remote import RUNNER_FILES, shipped_files

    names = sorted(f.name for f in shipped_files(tiny_onnx_dir))
    assert names == sorted(["model.onnx", "config.json", "remote_runner.py", "ortcore.py"])
    assert [f.name for f in RUNNER_FILES] == ["remote_runner.py", "ortcore.py"]


def test_runner_from_the_shipped_files_alone_matches_the_host_keys(tiny_onnx_dir, tmp_path):
    from edgeft.runtime.bench import run_inline
    from edgeft.validate.remote import shipped_files

    folder = _device(shipped_files(tiny_onnx_dir), tmp_path / "device")
    for io_binding in ("0", "1"):  # the plain loop and the host's bound loop (chained OrtValues here)
        proc = _run_on_device(folder, *_lm_args("--shared-kv", "0", "--io-binding", io_binding))
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (res["runs"], res["decode_steps"], res["prompt_tokens"], res["threads"]) == (2, 6, len(PROMPT), 1)
    local = run_inline(str(tiny_onnx_dir), "onnx", 1, PROMPT, 2, 0, 1)
    assert set(res) == set(local) | {"python", "onnxruntime", "machine", "hostname"}


def test_runner_reads_the_head_size_from_the_shipped_config(symbolic_head_dir, tmp_path):
    from edgeft.validate.remote import shipped_files

    files = shipped_files(symbolic_head_dir)
    assert "config.json" in {f.name for f in files}
    proc = _run_on_device(_device(files, tmp_path / "with-config"), *_lm_args("--shared-kv", "0"))
    assert proc.returncode == 0, proc.stderr
    without = _device([f for f in files if f.name != "config.json"], tmp_path / "without-config")
    proc = _run_on_device(without, *_lm_args("--shared-kv", "0"))
    assert proc.returncode != 0 and "KV head size is symbolic" in proc.stderr


def test_runner_errors_are_one_line_without_edgeft(tmp_path):
    from edgeft.validate.remote import RUNNER_FILES

    folder = _device(list(RUNNER_FILES), tmp_path / "device")
    proc = _run_on_device(folder, *_lm_args())
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"{folder}: no .onnx file in this folder; export the model first "
                                                "(`edgeft export`)"]


def test_encoder_runner_from_the_shipped_files(tmp_path):
    """An encoder graph built in code (no exporter): embedding lookup + mean, int64 ids and mask."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeft.validate.remote import shipped_files

    emb = numpy_helper.from_array(np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32), "emb")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
         helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
         helper.make_node("Mul", ["h", "m3"], ["last_hidden_state"])],
        "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 8])],
        [emb, numpy_helper.from_array(np.asarray([2], np.int64), "axis")])
    src = tmp_path / "enc"
    src.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src / "model.onnx"))
    folder = _device(shipped_files(src), tmp_path / "device")
    proc = _run_on_device(folder, "--kind", "encoder", "--batch", "2", "--seq", "16", "--warmup", "0",
                          "--repeats", "3")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (res["kind"], res["batch"], res["seq_len"], res["runs"]) == ("encoder", 2, 16, 3)


def test_host_ortlm_is_the_shipped_decoder():
    """OrtLM adds nothing to the decode loop the device runs: the same class, from the same file."""
    from edgeft.runtime import ortcore, remote_runner
    from edgeft.runtime.lm import OrtLM
    from edgeft.validate.remote import RUNNER_FILES

    assert OrtLM.__mro__[1] is ortcore.OrtDecoder
    assert [k for k in vars(OrtLM) if not k.startswith("__")] == []
    assert remote_runner.ortcore is ortcore and Path(ortcore.__file__).resolve() in RUNNER_FILES
