"""Check a release bundle (folder or ``.tar.gz``) against its ``manifest.json``.

Every problem is collected (changed, missing, extra or non-regular file) and reported in one
``VerifyError``. ``manifest.json`` itself must match its ``manifest_sha256`` self-hash and be
byte-for-byte the layout ``package`` writes, so any edit to it (a metric, even whitespace) fails.
Tarballs are read to the end of their gzip stream first (bad CRC, length or truncation is reported),
then checked member by member before anything is extracted: absolute paths, ``..``, links, devices
and members outside the single top folder are refused.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.errors import VerifyError
from edgeft.release.bundle import (
    CHUNK_SIZE,
    MANIFEST_HASH_KEY,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    iter_bundle_files,
    manifest_digest,
    render_manifest,
    sha256_file,
    unsafe_path_reason,
)

log = logging.getLogger(__name__)

_TAR_SUFFIXES = (".tar.gz", ".tgz")
_GZIP_MAGIC = b"\x1f\x8b"
# What a damaged compressed stream or tar archive can raise (zlib.error is not an OSError).
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class VerifyResult:
    """A bundle that matched its manifest."""

    bundle: Path
    n_files: int
    total_bytes: int
    manifest: dict[str, Any]


def _short(digest: str) -> str:
    return f"{digest[:12]}…" if len(digest) > 12 else digest


def _load_manifest(bundle_dir: Path, label: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed manifest and its raw bytes; VerifyError if it is missing or malformed."""
    path = bundle_dir / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        raise VerifyError(f"{label}: {MANIFEST_NAME} is missing; is this a bundle made by `edgeft package`?")
    raw = path.read_bytes()  # bytes, not read_text: newline translation would hide a changed byte
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VerifyError(f"{label}: {MANIFEST_NAME} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise VerifyError(f"{label}: {MANIFEST_NAME} must hold a JSON object")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise VerifyError(
            f"{label}: {MANIFEST_NAME}: schema_version={manifest.get('schema_version')!r} is not supported "
            f"(expected {SCHEMA_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, list):
        raise VerifyError(f"{label}: {MANIFEST_NAME}: 'files' must be a list of {{path, size, sha256}}")
    for i, entry in enumerate(files):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and not isinstance(entry.get("size"), bool)
            and isinstance(entry.get("sha256"), str)
        )
        if not ok:
            raise VerifyError(f"{label}: {MANIFEST_NAME}: files[{i}] must be {{path: str, size: int, sha256: str}}, got {entry!r}")
    return manifest, raw


def _manifest_problem(manifest: dict[str, Any], raw: bytes) -> str | None:
    """Why ``manifest.json`` is not exactly what ``package`` wrote, or None if it is."""
    claimed = manifest.get(MANIFEST_HASH_KEY)
    if claimed is None:
        return f"{MANIFEST_NAME}: no {MANIFEST_HASH_KEY} field (made by an older edgeft, or edited); re-run `edgeft package`"
    if not isinstance(claimed, str):
        return f"{MANIFEST_NAME}: {MANIFEST_HASH_KEY} must be a hex string, got {claimed!r}"
    try:
        digest, expected_bytes = manifest_digest(manifest), render_manifest(manifest)
    except ValueError:  # e.g. a "\ud800" escape: a lone surrogate has no UTF-8 form, so package never wrote it
        return f"{MANIFEST_NAME}: content changed (holds text that package cannot have written)"
    if claimed != digest:  # exact compare: the digest is written in lower case
        return f"{MANIFEST_NAME}: content changed (self-hash mismatch)"
    if raw != expected_bytes:  # same content, different bytes: whitespace, escapes, key order
        return f"{MANIFEST_NAME}: content changed (bytes differ from the layout written by `edgeft package`)"
    return None


def _check_dir(bundle_dir: Path, label: Path) -> VerifyResult:
    manifest, raw = _load_manifest(bundle_dir, label)
    problems: list[str] = []
    if problem := _manifest_problem(manifest, raw):
        problems.append(problem)
    listed: set[str] = set()
    total = 0
    for entry in manifest["files"]:
        rel, size, digest = entry["path"], entry["size"], entry["sha256"]
        reason = unsafe_path_reason(rel)
        if reason:
            problems.append(f"{rel}: unsafe path in {MANIFEST_NAME} ({reason})")
            continue
        if rel in listed:
            problems.append(f"{rel}: listed twice in {MANIFEST_NAME}")
            continue
        listed.add(rel)
        total += size
        p = bundle_dir / rel
        if p.is_symlink():
            problems.append(f"{rel}: is a symlink, expected a regular file")
        elif not p.exists():
            problems.append(f"{rel}: missing (listed in {MANIFEST_NAME})")
        elif not p.is_file():
            problems.append(f"{rel}: is not a regular file")
        elif (actual := p.stat().st_size) != size:
            problems.append(f"{rel}: size mismatch (expected {size} bytes, got {actual})")
        elif (got := sha256_file(p)) != digest.lower():
            problems.append(f"{rel}: sha256 mismatch (expected {_short(digest)}, got {_short(got)})")
    for rel in iter_bundle_files(bundle_dir):
        if rel != MANIFEST_NAME and rel not in listed:
            problems.append(f"{rel}: extra file not listed in {MANIFEST_NAME}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise VerifyError(f"{label}: verification failed: {len(problems)} problem(s):\n{lines}")
    log.info("verified %s: %d files, %d bytes", label, len(listed), total)
    return VerifyResult(bundle=label, n_files=len(listed), total_bytes=total, manifest=manifest)


def _member_problem(m: tarfile.TarInfo) -> str | None:
    if m.issym() or m.islnk():
        return f"is a link (-> {m.linkname!r})"
    if m.ischr() or m.isblk() or m.isfifo():
        return "is a device or fifo"
    if not (m.isfile() or m.isdir()):
        return "is not a regular file or directory"
    return None


def _check_gzip_stream(tar_path: Path, label: Path) -> None:
    """Decompress a gzip file to its end so a bad CRC, length or truncation is a VerifyError.

    tarfile alone stops at the end-of-archive marker, or silently at the first garbled header
    after the first one, so it may never reach the gzip trailer that would reveal the damage.
    Files that are not gzip are left to ``tarfile.open``.
    """
    try:
        with open(tar_path, "rb") as f:
            if f.read(len(_GZIP_MAGIC)) != _GZIP_MAGIC:
                return
    except OSError:
        return  # unreadable file: tarfile.open reports it
    try:
        with gzip.open(tar_path, "rb") as gz:
            while gz.read(CHUNK_SIZE):
                pass
    except _READ_ERRORS as e:
        raise VerifyError(f"{label}: corrupt gzip data ({e})") from e


def _check_sidecar(tar_path: Path, label: Path) -> None:
    """Compare the archive with ``<name>.tar.gz.sha256`` written by ``package``, when it is there."""
    sidecar = tar_path.with_name(tar_path.name + ".sha256")
    if not sidecar.is_file():
        log.info("%s: no %s next to it; checking the files inside only", label, sidecar.name)
        return
    from edgeft.release.bundle import sha256_file

    expected = sidecar.read_text(encoding="utf-8", errors="replace").split()
    actual = sha256_file(tar_path)
    if not expected or expected[0].lower() != actual:
        raise VerifyError(f"{label}: archive bytes changed (sha256 {actual[:12]}… does not match {sidecar.name})")


def safe_extract(tar_path: Path, dest: Path) -> Path:
    """Extract a bundle tarball into ``dest`` after checking every member; return the top folder."""
    label = Path(tar_path)
    _check_sidecar(Path(tar_path), label)
    _check_gzip_stream(tar_path, label)
    try:
        tf = tarfile.open(tar_path, mode="r:*")
    except _READ_ERRORS as e:
        raise VerifyError(f"{label}: not a readable tar archive ({e})") from e
    with tf:
        try:
            members = tf.getmembers()
        except _READ_ERRORS as e:
            raise VerifyError(f"{label}: corrupt tar archive ({e})") from e
        top: str | None = None
        for m in members:
            reason = unsafe_path_reason(m.name)
            if reason:
                raise VerifyError(f"{label}: refusing member {m.name!r} ({reason})")
            problem = _member_problem(m)
            if problem:
                raise VerifyError(f"{label}: refusing member {m.name!r} ({problem})")
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if top is None:
                top = parts[0]
            if parts[0] != top or (len(parts) == 1 and not m.isdir()):
                raise VerifyError(f"{label}: refusing member {m.name!r} (outside the single top folder {top!r}/)")
        if top is None:
            raise VerifyError(f"{label}: empty tar archive")
        try:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(dest, members=members)
        except _READ_ERRORS as e:
            raise VerifyError(f"{label}: cannot extract ({e})") from e
    return Path(dest) / top


def verify(path: Path) -> VerifyResult:
    """Re-hash every file of a bundle folder or ``.tar.gz`` against its manifest; VerifyError lists every problem."""
    path = Path(path)
    if path.is_dir():
        return _check_dir(path, path)
    if not path.exists():
        raise VerifyError(f"{path}: no such bundle folder or tarball")
    if not path.name.endswith(_TAR_SUFFIXES):
        raise VerifyError(f"{path}: expected a bundle folder or a .tar.gz made by `edgeft package`")
    tmp = Path(tempfile.mkdtemp(prefix="edgeft-verify-"))
    try:
        top = safe_extract(path, tmp)
        if not top.is_dir():
            raise VerifyError(f"{path}: top folder {top.name!r} holds no directory")
        return _check_dir(top, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
