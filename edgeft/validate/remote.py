"""Latency measured on the real device over SSH (``measured-device``).

Uses the system ``ssh`` and ``scp`` binaries, so the user's ssh config (ProxyJump, ports, agent)
applies. One measurement: make a temp dir on the device (``mktemp -d``), copy the artifact's
ONNX graph (its external-data files, and the ``config.json`` / ``genai_config.json`` beside it) plus
:data:`RUNNER_FILES` (the standalone ``edgeft/runtime/remote_runner.py`` and ``ortcore.py``, the
decode loop the host runs too), run it with the device's Python, parse its JSON line, and remove
the temp dir again.
``measure_remote`` times greedy decoding of a causal LM; ``measure_remote_encoder`` times one
forward pass of an encoder at a stated batch size and sequence length.

Host keys are accepted on first use into a known_hosts file in a local temp dir that is deleted
afterwards; the user's own ``~/.ssh/known_hosts`` is neither read for new hosts nor written.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from edgeft.errors import EdgeftError

log = logging.getLogger(__name__)

_RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
RUNNER = _RUNTIME / "remote_runner.py"
# What the device needs besides the artifact: the runner and the one module it imports (stdlib + numpy + onnxruntime).
RUNNER_FILES = (RUNNER, _RUNTIME / "ortcore.py")
IDENTITY_ENV = "EDGEFT_SSH_IDENTITY"
CONNECT_TIMEOUT_S = 15


class RemoteError(EdgeftError):
    """A measurement on a device over SSH failed (connect, copy or run); the message names host and step."""


def artifact_files(artifact_dir: Path) -> list[Path]:
    """The graph the runner will load (decoder or encoder), the external-data files it references, and the
    config files beside it that the runner reads (the KV head size of graphs that leave it symbolic)."""
    return _inspect(Path(artifact_dir))[0]


def shipped_files(artifact_dir: Path) -> list[Path]:
    """Every file copied to the device for one measurement: :func:`artifact_files` and :data:`RUNNER_FILES`."""
    return artifact_files(artifact_dir) + list(RUNNER_FILES)


def _inspect(artifact_dir: Path) -> tuple[list[Path], bool]:
    """(artifact files, whether the graph uses GroupQueryAttention) from one read of the graph structure."""
    import onnx

    from edgeft.runtime.ortcore import CONFIG_FILES, find_onnx, graph_has_shared_kv

    model = find_onnx(artifact_dir)
    proto = onnx.load(str(model), load_external_data=False)
    names: set[str] = set()

    def walk(graph) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                names.update(e.value for e in t.external_data if e.key == "location")

    walk(proto.graph)
    configs = [model.parent / n for n in CONFIG_FILES if (model.parent / n).is_file()]
    return [model] + [model.parent / n for n in sorted(names)] + configs, graph_has_shared_kv(proto.graph)


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class _Session:
    """ssh/scp invocations sharing options, a temp known_hosts and an overall deadline."""

    def __init__(self, remote, identity_file: str | None, known_hosts: Path, timeout: float) -> None:
        self.host = remote.ssh
        self.port = int(remote.port)
        self.deadline = time.monotonic() + timeout
        self.opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                     "-o", f"UserKnownHostsFile={known_hosts}", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                     "-o", "LogLevel=ERROR"]
        if identity_file:
            self.opts += ["-i", str(identity_file), "-o", "IdentitiesOnly=yes"]

    def _run(self, step: str, args: list[str], timeout: float | None = None) -> str:
        left = self.deadline - time.monotonic() if timeout is None else timeout
        if left <= 0:
            raise RemoteError(f"{self.host}: {step} failed: timed out")
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host}: {step} failed: timed out after {left:.0f}s") from None
        except OSError as e:  # ssh/scp missing
            raise RemoteError(f"{self.host}: {step} failed: cannot start {args[0]} ({e.strerror})") from None
        if proc.returncode != 0:
            tail = _tail(proc.stderr or proc.stdout)
            raise RemoteError(f"{self.host}: {step} failed (exit {proc.returncode}): {tail}")
        return proc.stdout

    def ssh(self, step: str, command: str, timeout: float | None = None) -> str:
        return self._run(step, ["ssh", *self.opts, "-p", str(self.port), self.host, command], timeout)

    def scp(self, step: str, files: Sequence[Path], remote_dir: str) -> None:
        self._run(step, ["scp", "-q", *self.opts, "-P", str(self.port), *map(str, files),
                         f"{self.host}:{remote_dir}/"])


def measure_remote(remote, artifact_dir: Path, prompt_ids: Sequence[int], new_tokens: int, threads: int,
                   warmup: int, repeats: int, identity_file: str | Path | None = None,
                   timeout: float = 600) -> dict:
    """Run ``remote_runner.py`` on ``remote`` (a ``RemoteSpec``) for the ONNX artifact in ``artifact_dir``.

    ``identity_file`` (or ``$EDGEFT_SSH_IDENTITY``) selects the private key; otherwise ssh's own
    defaults apply. ``timeout`` bounds the whole measurement, in seconds. Returns the runner's
    JSON (the keys of ``edgeft.runtime.bench.run_inline`` plus python, onnxruntime, machine,
    hostname) with ``label: measured-device`` and ``device_host``. Raises ``RemoteError``.
    """
    files, shared_kv = _inspect(Path(artifact_dir))  # told to the runner: the device may lack the onnx package
    args = ["--prompt", json.dumps([int(t) for t in prompt_ids]), "--new-tokens", str(new_tokens),
            "--threads", str(threads), "--warmup", str(warmup), "--repeats", str(repeats),
            "--shared-kv", "1" if shared_kv else "0"]
    return _run_remote(remote, files + list(RUNNER_FILES), args, identity_file, timeout)


def measure_remote_encoder(remote, artifact_dir: Path, threads: int, batch: int, seq: int, warmup: int,
                           repeats: int, identity_file: str | Path | None = None, timeout: float = 600) -> dict:
    """Per-inference latency of the ONNX encoder in ``artifact_dir`` on ``remote`` at [batch, seq].

    Same transport, key selection, timeout and errors as ``measure_remote``. Returns the keys of
    ``edgeft.runtime.bench.run_encoder_inline`` plus python, onnxruntime, machine, hostname,
    ``label: measured-device`` and ``device_host``.
    """
    args = ["--kind", "encoder", "--batch", str(batch), "--seq", str(seq), "--threads", str(threads),
            "--warmup", str(warmup), "--repeats", str(repeats)]
    return _run_remote(remote, shipped_files(Path(artifact_dir)), args, identity_file, timeout)


def _run_remote(remote, files: Sequence[Path], runner_args: Sequence[str], identity_file: str | Path | None,
                timeout: float) -> dict:
    """Copy ``files`` (the artifact's and :data:`RUNNER_FILES`) to a temp dir on ``remote``, run the runner with
    ``runner_args`` (``--dir`` is added), remove the temp dir, and return its JSON line with the label added."""
    identity = identity_file or os.environ.get(IDENTITY_ENV) or None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RemoteError(f"{remote.ssh}: copy failed: local file(s) missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="edgeft-ssh-") as tmp:
        s = _Session(remote, identity, Path(tmp) / "known_hosts", timeout)
        out = s.ssh("connect", "mktemp -d")
        rdir = _tail(out)
        if not rdir.startswith("/") or any(c.isspace() or c in "'\"\\$`" for c in rdir):
            raise RemoteError(f"{remote.ssh}: connect failed: mktemp -d printed {rdir!r}")
        q = shlex.quote(rdir)
        try:
            s.scp("copy", files, rdir)
            args = [remote.python, f"{rdir}/{RUNNER.name}", "--dir", rdir, *runner_args]
            cmd = " ".join(shlex.quote(a) for a in args)
            out = s.ssh("run", f"cd {q} && {cmd}")
        finally:
            try:
                s.ssh("cleanup", f"rm -rf -- {q}", timeout=60)
            except RemoteError as e:
                log.warning("could not remove the temp dir on the device: %s", e)
    lines = [ln for ln in out.strip().splitlines() if ln.strip().startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RemoteError(f"{remote.ssh}: run failed: no JSON line in the runner's output ({_tail(out)})") from None
    result.update({"label": "measured-device", "device_host": remote.ssh})
    return result
