"""measured-device latency over a real SSH connection: an OpenSSH server on 127.0.0.1 at a free port.

The server is started from a throwaway config (host key, client key and authorized_keys in a
temp dir) and logs in as the current user; the "device's" Python is this venv's interpreter.
When ``sshd`` is missing it is installed with apt only if running as root with ``CI`` or
``EDGEFT_INSTALL_SSHD`` set; otherwise (or if that fails) the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeft.config.schema import RemoteSpec
from edgeft.errors import EdgeftError
from edgeft.validate.remote import IDENTITY_ENV, measure_remote

PROMPT = list(range(100, 110))


def _find_sshd() -> str | None:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _sshd_or_skip() -> str:
    missing = [b for b in ("ssh", "scp", "ssh-keygen") if shutil.which(b) is None]
    sshd = _find_sshd()
    if sshd is None and not missing:
        allowed = os.geteuid() == 0 and (os.environ.get("CI") or os.environ.get("EDGEFT_INSTALL_SSHD"))
        if not allowed:
            pytest.skip("sshd not found (apt-get install openssh-server, or run as root with "
                        "EDGEFT_INSTALL_SSHD=1 to let the test install it)")
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server"],
                              capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        sshd = _find_sshd()
        if sshd is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"sshd not found and `apt-get install openssh-server` failed: {tail[0]}")
    if missing:
        pytest.skip(f"OpenSSH client tools missing: {', '.join(missing)} (apt-get install openssh-client)")
    return sshd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeft-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory):
    """(user, port, client key path) of a running sshd; terminated at teardown."""
    sshd = _sshd_or_skip()
    tmp = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(tmp / "host_ed25519")
    client_key = _keygen(tmp / "client_ed25519")
    (tmp / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    port = _free_port()
    config = tmp / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir sshd insists on as root
    log = open(tmp / "sshd.log", "w+")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.skip(f"sshd could not start (exit {proc.returncode}): {log.read().strip()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip(f"sshd did not accept connections on 127.0.0.1:{port} within 20 s")
                time.sleep(0.1)
        yield pwd.getpwuid(os.getuid()).pw_name, port, client_key
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def tiny_onnx_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    from edgeft.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny-onnx") / "onnx"
    export_onnx(tiny_lm_dir, out, opset=18)
    return out


def test_measure_remote_over_ssh(sshd_server, tiny_onnx_dir, monkeypatch):
    from edgeft.runtime.bench import run_inline

    user, port, key = sshd_server
    monkeypatch.setenv(IDENTITY_ENV, str(key))
    spec = RemoteSpec(ssh=f"{user}@127.0.0.1", port=port, python=sys.executable)
    res = measure_remote(spec, tiny_onnx_dir, PROMPT, new_tokens=4, threads=1, warmup=1, repeats=2, timeout=300)
    assert res["label"] == "measured-device" and res["device_host"] == f"{user}@127.0.0.1"
    assert res["decode_tok_s"] > 0 and res["ttft_ms_p50"] > 0 and res["peak_rss_mb"] > 0
    assert (res["runs"], res["decode_steps"], res["prompt_tokens"], res["threads"]) == (2, 6, len(PROMPT), 1)
    local = run_inline(str(tiny_onnx_dir), "onnx", 1, PROMPT, 2, 0, 1)
    extra = {"label", "device_host", "python", "onnxruntime", "machine", "hostname"}
    assert set(res) == set(local) | extra
    assert res["hostname"] == socket.gethostname()


def test_wrong_port_names_host_and_connect(sshd_server, tiny_onnx_dir):
    user, port, key = sshd_server
    spec = RemoteSpec(ssh=f"{user}@127.0.0.1", port=_free_port(), python=sys.executable)
    with pytest.raises(EdgeftError) as ei:
        measure_remote(spec, tiny_onnx_dir, PROMPT, 4, 1, 0, 1, identity_file=key, timeout=60)
    msg = str(ei.value)
    assert f"{user}@127.0.0.1" in msg and "connect" in msg and "\n" not in msg


def test_failing_runner_names_run_and_cleans_up(sshd_server, tiny_onnx_dir, tmp_path):
    user, port, key = sshd_server
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "ModuleNotFoundError: onnxruntime" >&2\nexit 3\n')
    fake.chmod(0o755)
    spec = RemoteSpec(ssh=f"{user}@127.0.0.1", port=port, python=str(fake))
    with pytest.raises(EdgeftError, match=r"127\.0\.0\.1: run failed .*ModuleNotFoundError: onnxruntime"):
        measure_remote(spec, tiny_onnx_dir, PROMPT, 4, 1, 0, 1, identity_file=key, timeout=120)
    args = (tmp_path / "args").read_text().split()
    remote_dir = Path(args[args.index("--dir") + 1])
    assert not remote_dir.exists(), "the remote temp dir must be removed after a failed run"


def test_validate_gates_a_remote_profile_on_the_device_measurement(sshd_server, tiny_onnx_dir, tiny_lm_dir, tmp_path,
                                                                   monkeypatch):
    """A profile with `remote:` makes validate run the artifact over SSH and gate speed on that."""
    import shutil

    import yaml

    from edgeft.config.schema import Goal, ValidateConfig
    from edgeft.data.intents import generate
    from edgeft.validate import Artifact, validate

    user, port, key = sshd_server
    monkeypatch.setenv(IDENTITY_ENV, str(key))
    home = tmp_path / "home"
    shutil.copytree(Path(__file__).resolve().parents[2] / "devices", home / "devices")
    profile = yaml.safe_load((home / "devices" / "pi5.yaml").read_text())
    profile.update(name="loopback", remote={"ssh": f"{user}@127.0.0.1", "port": port, "python": sys.executable},
                   budgets={"decode_tok_s": 1.0})
    (home / "devices" / "loopback.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("EDGEFT_HOME", str(home))
    _, ev = generate(4, 2, seed=0)
    cfg = ValidateConfig.model_validate({
        "devices": ["loopback"], "eval_examples": 2, "max_new_tokens": 4, "include_base": False,
        "perplexity": {"seq_len": 32, "stride": 32, "max_tokens": 64},
        "latency": {"new_tokens": 4, "warmup": 0, "repeats": 1},
        "budgets": {"exact_match": Goal(threshold=0.0).model_dump(), "perplexity": {"percent_max_degradation": 1000}}})
    arts = [Artifact("merged", tiny_lm_dir, "pytorch", role="reference"), Artifact("onnx", tiny_onnx_dir, "onnx")]
    report = validate(arts, tiny_lm_dir, ev, tmp_path / "out", cfg, "Parse the request into JSON.")
    res = report.devices["loopback"].results["onnx"]
    assert res.gated_on == "measured-device"
    assert res.latency.measured_device.device_host == f"{user}@127.0.0.1"
    assert any(g.name.startswith("decode_tok_s (measured-device)") for g in res.gates), res.gates
    assert (tmp_path / "out" / "report.html").is_file()
