"""Release bundle: ``<name>-<version>/`` with artifacts, model card, LICENSE and a hashed manifest.

``manifest.json`` lists every other file with its size and sha256, and hashes itself too:
``manifest_sha256`` is the sha256 of the manifest's canonical JSON without that field (see
``manifest_digest``), so an edit to any manifest field (a metric, say) is caught as well.

``package`` stages everything in a temporary folder inside ``out_dir`` and renames it into place,
so a failure never leaves a half-written bundle or tarball behind. ``edgeft.release.verify``
checks a bundle (folder or ``.tar.gz``) against its ``manifest.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Mapping

from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_HASH_KEY = "manifest_sha256"
README_NAME = "README.md"
LICENSE_NAME = "LICENSE"
RESERVED_NAMES = (MANIFEST_NAME, README_NAME, LICENSE_NAME)
CHUNK_SIZE = 1 << 20  # 1 MiB

# Distributions whose versions go into the manifest when installed.
TRACKED_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-genai",
    "bitsandbytes",
    "accelerate",
    "gguf",
    "executorch",
    "torchao",
)

# Keys written by ``package`` itself; ``manifest_extra`` may not override them.
_MANIFEST_KEYS = (
    "schema_version",
    "name",
    "version",
    "created_utc",
    "edgeft_version",
    "libraries",
    "python",
    "platform",
    MANIFEST_HASH_KEY,
    "files",
)


@dataclass(frozen=True)
class PackageResult:
    """What ``package`` wrote."""

    bundle_dir: Path
    tarball: Path | None
    manifest: dict[str, Any]  # as written to manifest.json (JSON values only, with manifest_sha256)


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


def unsafe_path_reason(rel: str) -> str | None:
    """Why ``rel`` cannot be a path inside a bundle (absolute, ``..``, empty), or None if it is fine."""
    if not rel or rel.strip("/\\.") == "":
        return "empty path"
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or win.root:
        return "absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "'..' component"
    return None


def normalize_relpath(rel: str, where: str) -> str:
    """``rel`` as a clean POSIX relative path; ConfigError naming ``where`` if it is unsafe."""
    reason = unsafe_path_reason(rel)
    if reason:
        raise ConfigError(f"{where}: {rel!r} is not allowed ({reason}); use a relative path inside the bundle")
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _check_name_part(value: str, field: str) -> None:
    if not value or value in (".", "..") or any(c in value for c in "/\\\0") or value != value.strip():
        raise ConfigError(f"package: {field}={value!r} is not usable in a folder name; use e.g. 'intent-parser' / '1.0.0'")


def library_versions() -> dict[str, str]:
    """Versions of the installed tracked libraries (missing ones are left out)."""
    out: dict[str, str] = {}
    for dist in TRACKED_LIBRARIES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def edgeft_version() -> str:
    try:
        return importlib.metadata.version("edgeft")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return Path(obj).as_posix()
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic models
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The ``manifest_sha256`` value: sha256 of the canonical JSON of ``manifest`` without that field.

    Canonical JSON is ``json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    encoded as UTF-8; ``manifest`` must hold JSON values only (as ``json.loads`` returns them).
    """
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def render_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes ``package`` writes to ``manifest.json`` (2-space indent, UTF-8, trailing newline)."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-native copy of ``manifest`` with ``manifest_sha256`` added just before ``files``.

    The copy is what ``json.loads`` will give back from ``manifest.json``, so ``verify`` recomputes
    the same digest (paths, numpy scalars and the like are already converted).
    """
    sealed = json.loads(json.dumps(manifest, ensure_ascii=False, default=_json_default))
    files = sealed.pop("files")
    sealed[MANIFEST_HASH_KEY] = manifest_digest({**sealed, "files": files})
    sealed["files"] = files
    return sealed


def iter_bundle_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of every file under ``root``, sorted, not following links."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            found.append((rel_dir / name).as_posix())
    return iter(sorted(found))


# --------------------------------------------------------------------------- package


def _validate_files(files: Mapping[str, Path]) -> dict[str, Path]:
    clean: dict[str, Path] = {}
    for rel, src in files.items():
        norm = normalize_relpath(str(rel), "package: files")
        if norm in RESERVED_NAMES:
            raise ConfigError(f"package: files: {rel!r} is written by package itself; pass it as model_card/license_text instead")
        if norm in clean:
            raise ConfigError(f"package: files: {rel!r} is given twice")
        src = Path(src)
        if not src.exists():
            raise ConfigError(f"package: files[{rel!r}]: source {src} does not exist")
        if not (src.is_file() or src.is_dir()):
            raise ConfigError(f"package: files[{rel!r}]: source {src} is not a regular file or directory")
        clean[norm] = src
    keys = sorted(clean)
    for a in keys:
        for b in keys:
            if a != b and b.startswith(a + "/"):
                raise ConfigError(f"package: files: {b!r} lies inside {a!r}; give each path once")
    return clean


def _build_manifest(name: str, version: str, bundle: Path, manifest_extra: Mapping[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeft_version": edgeft_version(),
        "libraries": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    manifest.update(manifest_extra)
    entries = []
    for rel in iter_bundle_files(bundle):
        if rel == MANIFEST_NAME:
            continue
        p = bundle / rel
        entries.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
    manifest["files"] = entries
    return manifest


def _write_tarball(bundle: Path, arcroot: str, dest: Path, mtime: int) -> None:
    """Deterministic ``.tar.gz`` of ``bundle`` under ``arcroot/``: sorted, regular files and dirs only."""

    def info(path: Path, arcname: str) -> tarfile.TarInfo:
        st = path.lstat()
        ti = tarfile.TarInfo(arcname)
        if stat.S_ISDIR(st.st_mode):
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        elif stat.S_ISREG(st.st_mode):
            ti.type, ti.mode, ti.size = tarfile.REGTYPE, 0o644, st.st_size
        else:
            raise ConfigError(f"package: {path} is neither a regular file nor a directory; cannot put it in the tarball")
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, 0, 0, "", ""
        return ti

    def add(tf: tarfile.TarFile, path: Path, arcname: str) -> None:
        ti = info(path, arcname)
        if ti.isdir():
            tf.addfile(ti)
            for child in sorted(os.listdir(path)):
                add(tf, path / child, f"{arcname}/{child}")
        else:
            with open(path, "rb") as f:
                tf.addfile(ti, f)

    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=3) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            add(tf, bundle, arcroot)


def _swap_into_place(new: Path, final: Path, graveyard: Path) -> None:
    """Rename ``new`` onto ``final``; an existing ``final`` is moved into ``graveyard`` first."""
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = graveyard / "previous"
        os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise


def package(
    name: str,
    version: str,
    out_dir: Path,
    files: dict[str, Path],
    manifest_extra: dict,
    model_card: str,
    license_text: str,
    tarball: bool = True,
) -> PackageResult:
    """Write ``out_dir/<name>-<version>/`` (and ``.tar.gz``), replacing an existing bundle of that name."""
    # Over 80 lines: the bundle is written in one temporary folder in order (files, card, license, manifest with its
    # own hash, tarball, checksum) and moved into place at the end, so a failure leaves nothing half-written.
    _check_name_part(name, "name")
    _check_name_part(version, "version")
    sources = _validate_files(files)
    clash = sorted(set(manifest_extra) & set(_MANIFEST_KEYS))
    if clash:
        raise ConfigError(f"package: manifest_extra may not set {', '.join(clash)} (written by package itself)")

    stem = f"{name}-{version}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_dir = out_dir / stem
    final_tar = out_dir / f"{stem}.tar.gz"
    out_resolved = out_dir.resolve()
    for rel, src in sources.items():
        if src.is_dir() and out_resolved.is_relative_to(src.resolve()):
            raise ConfigError(f"package: files[{rel!r}]: out_dir {out_dir} lies inside the source folder {src}; pick another out_dir")

    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=out_dir))
    try:
        bundle = staging / stem
        bundle.mkdir()
        for rel, src in sorted(sources.items()):
            dest = bundle / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                try:
                    shutil.copytree(src, dest, symlinks=False, copy_function=shutil.copyfile)
                except shutil.Error as e:  # e.g. a dangling symlink inside the source folder
                    raise ConfigError(f"package: files[{rel!r}]: cannot copy {src}: {e}") from e
            else:
                shutil.copyfile(src, dest)
            log.debug("bundle: %s <- %s", rel, src)
        (bundle / README_NAME).write_text(model_card if model_card.endswith("\n") else model_card + "\n", encoding="utf-8")
        (bundle / LICENSE_NAME).write_text(license_text if license_text.endswith("\n") else license_text + "\n", encoding="utf-8")

        manifest = _build_manifest(name, version, bundle, manifest_extra)
        try:
            manifest = _seal_manifest(manifest)
            data = render_manifest(manifest)
        except (TypeError, ValueError) as e:  # UnicodeEncodeError (lone surrogate) is a ValueError
            raise ConfigError(f"package: manifest_extra is not JSON serializable: {e}") from e
        (bundle / MANIFEST_NAME).write_bytes(data)  # bytes: no newline translation on Windows

        staged_tar = staging / f"{stem}.tar.gz"
        if tarball:
            created = datetime.strptime(manifest["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            _write_tarball(bundle, stem, staged_tar, int(created.timestamp()))

        graveyard = staging / "old"
        graveyard.mkdir()
        _swap_into_place(bundle, final_dir, graveyard)
        sidecar = final_tar.with_name(final_tar.name + ".sha256")
        if tarball:
            # The tarball's own checksum: deflate has redundant bits (e.g. code lengths of unused
            # symbols) that can change without changing any file, so only a hash of the whole
            # archive catches every changed byte of it.
            staged_sum = staging / sidecar.name
            staged_sum.write_text(f"{sha256_file(staged_tar)}  {final_tar.name}\n")
            os.replace(staged_tar, final_tar)
            os.replace(staged_sum, sidecar)
        else:
            for stale in (final_tar, sidecar):
                if stale.exists():
                    log.info("removing stale %s (tarball=False)", stale)
                    stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    total = sum(e["size"] for e in manifest["files"])
    log.info("packaged %s: %d files, %.1f MB%s", final_dir, len(manifest["files"]), total / 1e6,
             f" (+ {final_tar.name})" if tarball else "")
    return PackageResult(bundle_dir=final_dir, tarball=final_tar if tarball else None, manifest=manifest)


# --------------------------------------------------------------------------- model card

_NA = "n/a"
_STD_COLUMNS = ("artifact", "exact_match", "perplexity", "perplexity_general", "size_mb")


def _text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return _NA
    return str(value).strip()


def _paragraph(value: Any) -> str:
    """A string as-is, a list as bullets, anything missing as n/a."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if str(v).strip()]
        return "\n".join(f"- {v}" for v in items) if items else _NA
    return _text(value)


def _cell(value: Any, fmt: str = "") -> str:
    if value is None or value == "":
        return _NA
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    if isinstance(value, bool):
        return "pass" if value else "fail"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _metrics_table(rows: Any, devices: list[str]) -> str:
    if not rows or not isinstance(rows, (list, tuple)):
        return _NA
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        return _NA
    # classifier rows carry accuracy / macro_f1 in place of exact_match / perplexity
    cls = any("accuracy" in r for r in rows)
    metric_keys, metric_names = ((("accuracy", ".4f"), ("macro_f1", ".4f")), ("Accuracy", "Macro-F1")) if cls else (
        (("exact_match", ".3f"), ("perplexity", ".2f")), ("Exact match", "Perplexity"))
    if not cls and any("perplexity_general" in r for r in rows):  # validate.perplexity.general
        metric_keys, metric_names = (*metric_keys, ("perplexity_general", ".2f")), (*metric_names, "General-text ppl")
    std = ("artifact", *(k for k, _ in metric_keys), "size_mb")
    device_cols = list(devices)
    for r in rows:  # devices present in rows but not listed still get a column
        for k in r:
            if k not in std and k not in _STD_COLUMNS and k not in device_cols:
                device_cols.append(k)
    header = ["Artifact", *metric_names, "Size (MB)", *device_cols]
    align = ["---"] + ["---:"] * (len(metric_keys) + 1) + [":---:"] * len(device_cols)  # metrics and size: right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [
            _cell(r.get("artifact")),
            *(_cell(r.get(k), fmt) for k, fmt in metric_keys),
            _cell(r.get("size_mb"), ".1f"),
            *(_cell(r.get(d)) for d in device_cols),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_model_card(ctx: dict) -> str:
    """Model card markdown (README.md of the bundle); missing keys render as ``n/a``."""
    # Over 80 lines: the model card is one Markdown document written top to bottom (front matter, use, data, method,
    # metrics table, devices, limitations).
    ctx = dict(ctx or {})
    name, version = _text(ctx.get("name")), _text(ctx.get("version"))
    devices_raw = ctx.get("devices") or []
    devices = [str(d) for d in devices_raw] if isinstance(devices_raw, (list, tuple)) else [str(devices_raw)]

    front = ["---"]
    if ctx.get("base_model"):
        front.append(f"base_model: {json.dumps(str(ctx['base_model']))}")
    if ctx.get("license"):
        front.append(f"license: {json.dumps(str(ctx['license']))}")
    front += ["tags:", "  - edgeft", "  - edge", "---", ""]

    command = ctx.get("command")
    recipe = ctx.get("recipe")
    reproduce = [f"Recipe: `{recipe}`" if recipe else f"Recipe: {_NA}", ""]
    reproduce += ["```bash", str(command).strip(), "```"] if command else [f"Command: {_NA}"]

    body = [
        f"# {name} {version}" if version != _NA else f"# {name}",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | {_cell(ctx.get('base_model'))} |",
        f"| Method | {_cell(ctx.get('method'))} |",
        f"| Target devices | {_cell(', '.join(devices)) if devices else _NA} |",
        f"| License | {_cell(ctx.get('license'))} |",
        f"| Recipe | {_cell(f'`{recipe}`' if recipe else None)} |",
        "",
        "## Intended use",
        "",
        _paragraph(ctx.get("intended_use")),
        "",
        "## Training data",
        "",
        _paragraph(ctx.get("data")),
        "",
        "## Method",
        "",
        f"Fine-tuned from `{ctx['base_model']}` with {_text(ctx.get('method'))}."
        if ctx.get("base_model")
        else _text(ctx.get("method")),
        "",
        "## Evaluation",
        "",
        "Exact match and perplexity on the held-out eval split (general-text perplexity, where shown, on "
        "validate.perplexity.general's text); per-device columns show whether the artifact met that device's "
        "budgets (see report.json / report.html).",
        "",
        _metrics_table(ctx.get("metrics_table"), devices),
        "",
        "## Limitations",
        "",
        _paragraph(ctx.get("limitations")),
        "",
        "## Reproduce",
        "",
        *reproduce,
        "",
        "## Verify",
        "",
        "`manifest.json` lists every file with its size and sha256. Check the bundle with:",
        "",
        "```bash",
        f"edgeft verify {name}-{version}" if name != _NA and version != _NA else "edgeft verify BUNDLE",
        "```",
        "",
        "## Serving and monitoring",
        "",
        "```bash",
        f"edgeft serve {name}-{version}" if name != _NA and version != _NA else "edgeft serve BUNDLE",
        "```",
        "",
        "serves the fastest artifact that passed validation (OpenAI-compatible API; it refuses to start on a bundle "
        "that does not verify). `reference_stats.json` holds aggregate statistics of the training inputs (length "
        "distribution, token and label frequencies, embedding centroid and spread, the model's confidence on "
        "held-out inputs) for `edgeft monitor`; it stores no training text.",
        "",
        "Privacy: with `--log DIR` the server writes every request's input and output verbatim, with its latency "
        "and the model's confidence, to `DIR/requests.jsonl` (rotated by size). Those logs are user data: keep them "
        "under the same access and retention rules as the inputs they record, and leave `--log` off where that is "
        "not possible. Without `--log` nothing about a request is stored.",
        "",
        "## License",
        "",
        f"{_text(ctx.get('license'))}. See `LICENSE`.",
        "",
    ]
    return "\n".join(front + body)
