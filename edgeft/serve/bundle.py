"""Open a release bundle for serving: verify it, then pick the artifact to serve from its validation report.

A bundle is served only when :func:`edgeft.release.verify.verify` passes on it (every file's sha256, the
manifest's own hash, no missing or extra file); a ``.tar.gz`` is checked member by member, extracted into a
private temporary folder and verified there. The artifact is chosen from ``report.json`` among the artifacts
the bundle ships (``artifacts/<name>/``):

* ``device`` given: the fastest artifact that passed every gate on that device profile;
* else, when the report has the ``host`` profile: the fastest that passed on ``host``;
* else: the fastest that passed on every required device of the report (or, when none passes all of them,
  on any required device: the rule ``package`` uses to decide what ships).

"Fastest" is the latency validate gated that device on (per-token for LMs, per-inference for encoders),
falling back to the artifact's latency measured on the validating machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeft.errors import ConfigError, VerifyError

REFERENCE_STATS = "reference_stats.json"


@dataclass
class ServedBundle:
    """A verified bundle on disk and the artifact chosen to serve from it."""

    source: Path  # what was given (folder or tarball)
    root: Path  # the bundle folder (inside ``workdir`` for a tarball)
    manifest: dict
    report: dict
    artifact: str
    artifact_info: dict
    device: str | None  # the profile the artifact was chosen for (None: required devices)
    threads: int
    why: str  # one line: how the artifact was chosen
    workdir: Path | None = None  # temporary extraction folder, removed by close()
    recipe: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``causal-lm``, ``classifier``, ``encoder`` or ``image-classifier`` (not served yet)."""
        from edgeft.artifacts import kind_of_report

        return kind_of_report(self.report)

    @property
    def artifact_dir(self) -> Path:
        return self.root / "artifacts" / self.artifact

    @property
    def tokenizer_dir(self) -> Path:
        tok = self.root / "tokenizer"
        return tok if tok.is_dir() else self.artifact_dir

    @property
    def model_id(self) -> str:
        return f"{self.manifest.get('name')}-{self.manifest.get('version')}/{self.artifact}"

    @property
    def system_prompt(self) -> str:
        return str((self.recipe.get("data") or {}).get("system_prompt") or "")

    def reference_stats(self) -> dict | None:
        f = self.root / REFERENCE_STATS
        return json.loads(f.read_text()) if f.is_file() else None

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def one_line(err: Exception) -> str:
    """A multi-line error (verify lists one problem per line) as one line."""
    return " ".join(part.strip().lstrip("- ").strip() for part in str(err).splitlines() if part.strip())


def verified_root(path: Path) -> tuple[Path, Path | None, dict]:
    """(bundle folder, temp folder to remove or None, manifest) of a bundle that verifies; VerifyError otherwise."""
    from edgeft.release.verify import safe_extract, verify

    path = Path(path)
    if path.is_dir():
        return path, None, verify(path).manifest
    if not path.exists():
        raise VerifyError(f"{path}: no such bundle folder or tarball")
    tmp = Path(tempfile.mkdtemp(prefix="edgeft-serve-"))
    try:
        root = safe_extract(path, tmp)
        manifest = verify(root).manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root, tmp, manifest


def _speed(report: dict, name: str, device: str | None) -> float:
    """Seconds-like cost of an artifact on a device: lower is faster; inf when nothing was measured."""
    rows = []
    if device is not None:
        r = report["devices"][device]["results"].get(name) or {}
        lat = (r.get("latency") or {}).get(r.get("gated_on") or "") or {}
        rows.append(lat)
    rows.append(report["artifacts"][name].get("latency") or {})
    for lat in rows:
        for key in ("per_token_ms_p50", "per_inference_ms_p50"):
            if isinstance(lat.get(key), (int, float)):
                return float(lat[key])
    return float("inf")


def choose_artifact(report: dict, shipped: list[str], device: str | None = None) -> tuple[str, str | None, str]:
    """(artifact, device profile or None, why) by the rules in the module docstring; ConfigError when none fits."""
    devices = report.get("devices") or {}
    if device is not None:
        if device not in devices:
            raise ConfigError(f"--device {device}: not a device of this bundle's report "
                              f"(validated for: {', '.join(devices) or 'none'})")
        ok = [n for n in devices[device]["deployable"] if n in shipped]
        if not ok:
            raise ConfigError(f"--device {device}: no shipped artifact passed validation on it "
                              f"(shipped: {', '.join(shipped)}); pick another --device")
        best = min(ok, key=lambda n: _speed(report, n, device))
        return best, device, f"fastest of {', '.join(ok)} that passed on {device}"
    if "host" in devices:
        ok = [n for n in devices["host"]["deployable"] if n in shipped]
        if ok:
            best = min(ok, key=lambda n: _speed(report, n, "host"))
            return best, "host", f"fastest of {', '.join(ok)} that passed on host"
    required = [d for d, v in devices.items() if v.get("required")]
    every = [n for n in shipped if required and all(n in devices[d]["deployable"] for d in required)]
    ok = every or [n for n in shipped if any(n in devices[d]["deployable"] for d in required)]
    if not ok:
        raise ConfigError("no shipped artifact passed validation on host or on a required device; "
                          "pick one with --device NAME")
    best = min(ok, key=lambda n: _speed(report, n, None))
    scope = "every" if every else "a"
    return best, None, (f"the report has no host profile: fastest (as measured by validate) of {', '.join(ok)}, "
                        f"which passed on {scope} required device ({', '.join(required)})")


def open_bundle(path: Path | str, device: str | None = None, threads: int | None = None) -> ServedBundle:
    """Verify the bundle at ``path`` and choose the artifact to serve; VerifyError / ConfigError say why not."""
    import yaml

    root, tmp, manifest = verified_root(Path(path))
    try:
        report = json.loads((root / "report.json").read_text())
        shipped = sorted({e["path"].split("/")[1] for e in manifest["files"]
                          if e["path"].startswith("artifacts/") and e["path"].count("/") >= 2})
        if not shipped:
            raise ConfigError(f"{path}: the bundle ships no artifacts/<name>/ folder")
        name, dev, why = choose_artifact(report, shipped, device)
        if threads is None:
            threads = _threads(report, dev)
        recipe = yaml.safe_load((root / "recipe.yaml").read_text()) if (root / "recipe.yaml").is_file() else {}
        return ServedBundle(Path(path), root, manifest, report, name, report["artifacts"][name], dev, threads, why,
                            tmp, recipe or {})
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _threads(report: dict, device: str | None) -> int:
    """The device profile's threads (capped at this machine's CPUs); the host profile's when no device is named."""
    cpus = os.cpu_count() or 1
    d = (report.get("devices") or {}).get(device or "")
    if d and d.get("threads_profile"):
        return max(1, min(int(d["threads_profile"]), cpus))
    from edgeft.config.loader import load_device

    return max(1, min(load_device("host").cpu.threads, cpus))
