"""Release bundle: package, verify, tamper detection and safe tarball extraction."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from edgeft.errors import ConfigError, EdgeftError, VerifyError
from edgeft.release import PackageResult, VerifyResult, package, render_model_card, verify
from edgeft.release import bundle as bundle_mod

NAME, VERSION = "intent-parser", "1.2.0"
STEM = f"{NAME}-{VERSION}"

# Every file of the fake bundle except manifest.json.
BUNDLE_FILES = [
    "LICENSE",
    "README.md",
    "artifacts/fp32/model.onnx",
    "artifacts/int4/model.onnx",
    "report.json",
    "tokenizer/special/tokens.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
]


def make_sources(root: Path) -> dict[str, Path]:
    src = root / "src"
    (src / "tok" / "special").mkdir(parents=True, exist_ok=True)
    (src / "tok" / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    (src / "tok" / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    (src / "tok" / "special" / "tokens.txt").write_text("<s>\n</s>\n")
    (src / "fp32.onnx").write_bytes(bytes(range(256)) * 40)
    (src / "int4.onnx").write_bytes(b"\x01\x02" * 3000)
    (src / "report.json").write_text(json.dumps({"exact_match": 0.93}))
    return {
        "artifacts/fp32/model.onnx": src / "fp32.onnx",
        "artifacts/int4/model.onnx": src / "int4.onnx",
        "tokenizer/": src / "tok",
        "report.json": src / "report.json",
    }


def do_package(tmp_path: Path, **kw) -> PackageResult:
    args = dict(
        name=NAME,
        version=VERSION,
        out_dir=tmp_path / "out",
        files=make_sources(tmp_path) if "files" not in kw else kw.pop("files"),
        manifest_extra={"recipe_sha256": "0" * 64, "metrics": {"int4": {"exact_match": 0.9}}, "target_devices": ["pi5"]},
        model_card=render_model_card({"name": NAME, "version": VERSION}),
        license_text="Apache-2.0",
    )
    args.update(kw)
    return package(**args)


@pytest.fixture
def packaged(tmp_path: Path) -> PackageResult:
    return do_package(tmp_path)


def leftovers(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_metric(path: Path) -> None:
    """Change one byte of manifest.json so that it stays valid JSON: exact_match 0.9 -> 0.8."""
    data = path.read_bytes()
    needle = b'"exact_match": 0.9'
    assert data.count(needle) == 1
    path.write_bytes(data.replace(needle, b'"exact_match": 0.8'))


def canonical_sha256(manifest: dict) -> str:
    """manifest_sha256 as specified: sha256 of the canonical JSON of the manifest without that field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def retar(bundle_dir: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(bundle_dir, arcname=bundle_dir.name)
    return dest


def verify_error(path: Path) -> str:
    with pytest.raises(VerifyError) as ei:
        verify(path)
    return str(ei.value)


# --------------------------------------------------------------------------- package


def test_package_layout_and_manifest(packaged: PackageResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert packaged.bundle_dir == out / STEM
    assert packaged.tarball == out / f"{STEM}.tar.gz"
    assert leftovers(out) == []

    raw = (packaged.bundle_dir / "manifest.json").read_bytes()
    on_disk = json.loads(raw)
    assert on_disk == packaged.manifest
    assert raw == (json.dumps(on_disk, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    m = packaged.manifest
    assert m["schema_version"] == 1 and m["name"] == NAME and m["version"] == VERSION
    assert m["created_utc"].endswith("Z")
    assert isinstance(m["edgeft_version"], str) and m["edgeft_version"]
    assert "torch" in m["libraries"] and "onnxruntime" in m["libraries"]
    assert m["python"] and m["platform"]
    assert m["recipe_sha256"] == "0" * 64 and m["target_devices"] == ["pi5"]
    assert list(m)[-2:] == ["manifest_sha256", "files"]
    assert m["manifest_sha256"] == canonical_sha256(m)

    paths = [f["path"] for f in m["files"]]
    assert paths == BUNDLE_FILES == sorted(paths)
    for f in m["files"]:
        p = packaged.bundle_dir / f["path"]
        assert f["size"] == p.stat().st_size
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert (packaged.bundle_dir / "LICENSE").read_text() == "Apache-2.0\n"
    assert (packaged.bundle_dir / "README.md").read_text().startswith("---\n")


def test_tarball_members(packaged: PackageResult) -> None:
    with tarfile.open(packaged.tarball) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == STEM
    assert all(n == STEM or n.startswith(STEM + "/") for n in names)
    assert all(m.isfile() or m.isdir() for m in members)
    assert {n[len(STEM) + 1 :] for n, m in zip(names, members) if m.isfile()} == set(BUNDLE_FILES) | {"manifest.json"}
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)


def test_tarball_is_deterministic(tmp_path: Path) -> None:
    a = do_package(tmp_path / "a")
    b = do_package(tmp_path / "b")
    with tarfile.open(a.tarball) as ta, tarfile.open(b.tarball) as tb:
        assert [m.name for m in ta.getmembers()] == [m.name for m in tb.getmembers()]


@pytest.mark.parametrize("bad", ["/etc/passwd", "../up.txt", "a/../../b", "C:\\x.onnx", "a\\..\\b", "", "."])
def test_package_rejects_unsafe_relpaths(tmp_path: Path, bad: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    with pytest.raises(ConfigError):
        do_package(tmp_path, files={bad: src})
    assert not (tmp_path / "out" / STEM).exists()


@pytest.mark.parametrize(
    "files",
    [
        {"README.md": "f.bin"},
        {"manifest.json": "f.bin"},
        {"a/b.bin": "missing.bin"},
        {"d": "dir", "d/x.bin": "f.bin"},
    ],
)
def test_package_rejects_bad_files(tmp_path: Path, files: dict[str, str]) -> None:
    (tmp_path / "f.bin").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError):
        do_package(tmp_path, files={k: tmp_path / v for k, v in files.items()})


@pytest.mark.parametrize("field, value", [("name", "a/b"), ("name", ".."), ("version", ""), ("version", "1/2")])
def test_package_rejects_bad_name_or_version(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ConfigError):
        do_package(tmp_path, **{field: value})


@pytest.mark.parametrize("key", ["files", "manifest_sha256"])
def test_package_rejects_manifest_extra_overriding_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        do_package(tmp_path, manifest_extra={key: []})


def test_manifest_hash_covers_converted_extra_values(tmp_path: Path) -> None:
    """Paths and non-str keys in manifest_extra are hashed as written, so verify agrees."""
    res = do_package(tmp_path, manifest_extra={"recipe": tmp_path / "r.yaml", "by_step": {1: 0.5}})
    assert res.manifest["recipe"] == (tmp_path / "r.yaml").as_posix() and res.manifest["by_step"] == {"1": 0.5}
    assert res.manifest["manifest_sha256"] == canonical_sha256(res.manifest)
    verify(res.bundle_dir)
    verify(res.tarball)


def test_package_rejects_out_dir_inside_source_dir(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    with pytest.raises(ConfigError, match="inside the source folder"):
        do_package(tmp_path, files={"tokenizer": tmp_path / "tok"}, out_dir=tmp_path / "tok" / "out")


def test_dangling_symlink_in_source_dir_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "gone.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ConfigError, match="cannot copy"):
        do_package(tmp_path, files={"tokenizer": tmp_path / "tok"})
    assert list((tmp_path / "out").iterdir()) == []


def test_failure_during_package_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod, "_write_tarball", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        do_package(tmp_path)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == []


def test_failure_during_repackage_keeps_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = do_package(tmp_path)
    old_manifest = (first.bundle_dir / "manifest.json").read_text()
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):  # fail when renaming the new bundle in
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        do_package(tmp_path, files={"only.txt": tmp_path / "src" / "report.json"})
    monkeypatch.undo()
    assert (first.bundle_dir / "manifest.json").read_text() == old_manifest
    assert leftovers(tmp_path / "out") == []
    verify(first.bundle_dir)
    verify(first.tarball)


def test_repackage_replaces_old_bundle(tmp_path: Path) -> None:
    first = do_package(tmp_path)
    new_src = tmp_path / "new.bin"
    new_src.write_bytes(b"new artifact")
    second = do_package(tmp_path, files={"artifacts/q8/model.onnx": new_src})
    assert second.bundle_dir == first.bundle_dir
    assert not (second.bundle_dir / "tokenizer").exists()
    assert [f["path"] for f in second.manifest["files"]] == ["LICENSE", "README.md", "artifacts/q8/model.onnx"]
    assert leftovers(tmp_path / "out") == []
    assert verify(second.bundle_dir).n_files == 3
    assert verify(second.tarball).n_files == 3


def test_repackage_without_tarball_removes_stale_tarball(tmp_path: Path) -> None:
    first = do_package(tmp_path)
    second = do_package(tmp_path, tarball=False)
    assert second.tarball is None
    assert not first.tarball.exists()


# --------------------------------------------------------------------------- verify


def test_verify_dir_and_tarball(packaged: PackageResult) -> None:
    total = sum(f["size"] for f in packaged.manifest["files"])
    for target in (packaged.bundle_dir, packaged.tarball):
        res = verify(target)
        assert isinstance(res, VerifyResult)
        assert res.bundle == target
        assert res.n_files == len(BUNDLE_FILES)
        assert res.total_bytes == total
        assert res.manifest["name"] == NAME


def test_verify_tarball_cleans_temp_dir(packaged: PackageResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    verify(packaged.tarball)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("form", ["dir", "tar"])
@pytest.mark.parametrize(
    "rel, where",
    [(rel, "middle") for rel in BUNDLE_FILES] + [("manifest.json", "metric"), ("manifest.json", "middle")],
)
def test_flipped_byte_names_exactly_that_file(packaged: PackageResult, tmp_path: Path, rel: str, where: str, form: str) -> None:
    path = packaged.bundle_dir / rel
    before = path.read_bytes()
    (flip_metric if where == "metric" else flip_byte)(path)
    after = path.read_bytes()
    assert len(after) == len(before) and sum(a != b for a, b in zip(before, after)) == 1
    target = packaged.bundle_dir if form == "dir" else retar(packaged.bundle_dir, tmp_path / "tampered.tar.gz")
    msg = verify_error(target)
    assert not any(other in msg for other in BUNDLE_FILES + ["manifest.json"] if other != rel)
    if rel == "manifest.json" and where == "middle":  # the flipped byte breaks UTF-8 / JSON
        assert msg.startswith(f"{target}: manifest.json is not valid JSON (")
        return
    assert msg.startswith(f"{target}: verification failed:")
    problems = [line.strip()[2:] for line in msg.splitlines()[1:]]
    assert len(problems) == 1
    if rel == "manifest.json":
        assert problems[0] == "manifest.json: content changed (self-hash mismatch)"
    else:
        assert problems[0].startswith(f"{rel}: sha256 mismatch (expected ")


def test_every_single_byte_change_to_manifest_is_caught(packaged: PackageResult) -> None:
    """Digits, letters, quotes and whitespace alike: a change that keeps the same JSON content
    (a space turned into a tab, a newline into CR) is caught by the byte-exact layout check."""
    path = packaged.bundle_dir / "manifest.json"
    original = path.read_bytes()
    swaps = {ord(" "): ord("\t"), ord("\n"): ord("\r")}
    for i, byte in enumerate(original):
        if byte not in swaps and i % 4:  # every whitespace byte, every 4th other byte (keeps it fast)
            continue
        data = bytearray(original)
        data[i] = swaps.get(byte, byte ^ 0x01)
        path.write_bytes(bytes(data))
        with pytest.raises(VerifyError, match="manifest.json"):
            verify(packaged.bundle_dir)
    path.write_bytes(original)
    verify(packaged.bundle_dir)


def test_manifest_whitespace_change_reported_as_layout(packaged: PackageResult) -> None:
    path = packaged.bundle_dir / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'\n  "name"', b'\n\t"name"'))
    msg = verify_error(packaged.bundle_dir)
    assert "1 problem(s)" in msg
    assert "manifest.json: content changed (bytes differ from the layout written by `edgeft package`)" in msg


def test_manifest_without_self_hash_reported(packaged: PackageResult) -> None:
    _edit_manifest(packaged.bundle_dir, lambda m: m.pop("manifest_sha256"))
    assert "manifest.json: no manifest_sha256 field" in verify_error(packaged.bundle_dir)


def test_manifest_lone_surrogate_does_not_crash(packaged: PackageResult) -> None:
    _edit_manifest(packaged.bundle_dir, lambda m: m.update(platform="\ud800"))
    assert "manifest.json: content changed" in verify_error(packaged.bundle_dir)


def _flipped_at(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def _corrupted_tarball_error(bad: Path) -> str:
    msg = verify_error(bad)
    assert msg.startswith((f"{bad}: corrupt gzip data (", f"{bad}: not a readable tar archive (")), msg
    return msg


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda d: d[: len(d) // 2], "end-of-stream"),
        (lambda d: d[:-4], "end-of-stream"),  # gzip trailer cut short
        (lambda d: _flipped_at(d, -8), "CRC check failed"),  # gzip CRC32
        (lambda d: _flipped_at(d, -1), "Incorrect length"),  # gzip ISIZE
        (lambda d: _flipped_at(d, len(d) // 2), "corrupt gzip data"),  # inside the deflate stream
    ],
    ids=["truncated-half", "truncated-trailer", "crc", "isize", "body"],
)
def test_corrupted_tarball_names_tarball(packaged: PackageResult, tmp_path: Path, corrupt, needle: str) -> None:
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(corrupt(packaged.tarball.read_bytes()))
    assert needle in _corrupted_tarball_error(bad)


def test_tarball_byte_flips_without_checksum_never_pass_changed_content(packaged: PackageResult,
                                                                        tmp_path: Path) -> None:
    """Without the ``.sha256`` beside it, a flipped byte is a VerifyError naming the tarball, or
    (deflate has redundant bits) the archive still holds exactly the packaged bytes."""
    import gzip

    data = packaged.tarball.read_bytes()
    original = gzip.decompress(data)
    bad = tmp_path / "corrupt.tar.gz"
    for i in [0, 1, 2, 3, *range(10, len(data), 7), len(data) - 1]:
        flipped = _flipped_at(data, i)
        bad.write_bytes(flipped)
        try:
            verify(bad)
        except VerifyError as e:
            assert str(e).startswith(f"{bad}:"), e
            continue
        assert gzip.decompress(flipped) == original, f"byte {i}: changed content passed verification"


def test_every_tarball_byte_flip_caught_with_its_checksum(packaged: PackageResult, tmp_path: Path) -> None:
    """With the ``.sha256`` written next to the archive, every single changed byte is caught, also
    the ones deflate can absorb without changing any file (gzip header fields, unused code lengths)."""
    data = packaged.tarball.read_bytes()
    bad = tmp_path / "corrupt.tar.gz"
    sidecar = packaged.tarball.with_name(packaged.tarball.name + ".sha256").read_text()
    (tmp_path / "corrupt.tar.gz.sha256").write_text(sidecar.replace(packaged.tarball.name, bad.name))
    for i in range(len(data)):
        bad.write_bytes(_flipped_at(data, i))
        assert "archive bytes changed" in verify_error(bad)


def test_size_change_reported(packaged: PackageResult) -> None:
    with open(packaged.bundle_dir / "report.json", "a") as f:
        f.write(" ")
    assert "report.json: size mismatch" in verify_error(packaged.bundle_dir)


def test_missing_and_extra_reported_together(packaged: PackageResult) -> None:
    (packaged.bundle_dir / "tokenizer" / "tokenizer.json").unlink()
    (packaged.bundle_dir / "artifacts" / "int4" / "extra.bin").write_bytes(b"?")
    flip_byte(packaged.bundle_dir / "LICENSE")
    msg = verify_error(packaged.bundle_dir)
    assert "3 problem(s)" in msg
    assert "tokenizer/tokenizer.json: missing" in msg
    assert "artifacts/int4/extra.bin: extra file not listed in manifest.json" in msg
    assert "LICENSE: sha256 mismatch" in msg


def test_symlink_in_bundle_dir_reported(packaged: PackageResult, tmp_path: Path) -> None:
    target = packaged.bundle_dir / "report.json"
    outside = tmp_path / "outside.json"
    shutil.copyfile(target, outside)
    target.unlink()
    target.symlink_to(outside)
    assert "report.json: is a symlink" in verify_error(packaged.bundle_dir)


def _edit_manifest(bundle_dir: Path, fn) -> None:
    p = bundle_dir / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_manifest_hash_tampering(packaged: PackageResult) -> None:
    def edit(m):
        m["files"][3]["sha256"] = "ab" * 32

    _edit_manifest(packaged.bundle_dir, edit)
    msg = verify_error(packaged.bundle_dir)
    assert "manifest.json: content changed (self-hash mismatch)" in msg
    assert f"{BUNDLE_FILES[3]}: sha256 mismatch (expected abababababab…" in msg


def test_manifest_entry_removed_or_added(packaged: PackageResult) -> None:
    def edit(m):
        m["files"] = [f for f in m["files"] if f["path"] != "report.json"]
        m["files"].append({"path": "ghost.bin", "size": 1, "sha256": "00" * 32})

    _edit_manifest(packaged.bundle_dir, edit)
    msg = verify_error(packaged.bundle_dir)
    assert "report.json: extra file not listed" in msg
    assert "ghost.bin: missing" in msg


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/passwd"])
def test_manifest_unsafe_path_not_followed(packaged: PackageResult, bad: str) -> None:
    def edit(m):
        m["files"].append({"path": bad, "size": 1, "sha256": "00" * 32})

    _edit_manifest(packaged.bundle_dir, edit)
    assert f"{bad}: unsafe path in manifest.json" in verify_error(packaged.bundle_dir)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"schema_version": 99, "files": []}', "schema_version"),
        ('{"schema_version": 1}', "'files'"),
        ('{"schema_version": 1, "files": [{"path": "x"}]}', "files[0]"),
    ],
)
def test_invalid_manifest(packaged: PackageResult, content: str, needle: str) -> None:
    (packaged.bundle_dir / "manifest.json").write_text(content)
    msg = verify_error(packaged.bundle_dir)
    assert "manifest.json" in msg and needle in msg


def test_missing_manifest(packaged: PackageResult) -> None:
    (packaged.bundle_dir / "manifest.json").unlink()
    assert "manifest.json is missing" in verify_error(packaged.bundle_dir)


def test_verify_nonexistent_and_wrong_kind(tmp_path: Path) -> None:
    assert "no such bundle" in verify_error(tmp_path / "nope")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert "not a readable tar archive" in verify_error(junk)
    assert VerifyError("x").exit_code == 8 and issubclass(VerifyError, EdgeftError)


# --------------------------------------------------------------------------- hostile tarballs


def _evil_tar(path: Path, evil: tarfile.TarInfo, payload: bytes = b"pwned") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        top = tarfile.TarInfo(STEM)
        top.type = tarfile.DIRTYPE
        tf.addfile(top)
        ok = tarfile.TarInfo(f"{STEM}/manifest.json")
        body = b'{"schema_version": 1, "files": []}'
        ok.size = len(body)
        tf.addfile(ok, io.BytesIO(body))
        if evil.isfile():
            evil.size = len(payload)
            tf.addfile(evil, io.BytesIO(payload))
        else:
            tf.addfile(evil)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    return ti


@pytest.mark.parametrize(
    "member",
    [
        _member(f"{STEM}/../evil"),
        _member("../evil"),
        _member("/tmp/evil-abs"),
        _member(f"{STEM}/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member(f"{STEM}/hard", tarfile.LNKTYPE, f"{STEM}/manifest.json"),
        _member(f"{STEM}/fifo", tarfile.FIFOTYPE),
        _member(f"{STEM}/dev", tarfile.CHRTYPE),
        _member("other-top/file.txt"),
        _member("loose-file.txt"),
    ],
    ids=["dotdot-inner", "dotdot", "absolute", "symlink", "hardlink", "fifo", "chardev", "second-top", "top-file"],
)
def test_hostile_tar_members_refused(tmp_path: Path, member: tarfile.TarInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    tar = _evil_tar(tmp_path / "evil.tar.gz", member)
    msg = verify_error(tar)
    assert msg.startswith(f"{tar}: refusing member {member.name!r}")
    assert list(scratch.iterdir()) == []  # temp dir cleaned, nothing extracted
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


# --------------------------------------------------------------------------- model card


def test_model_card_full() -> None:
    card = render_model_card(
        {
            "name": NAME,
            "version": VERSION,
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "method": "LoRA (r=16)",
            "data": "Generated intent-parsing utterances (320 train / 48 eval).",
            "intended_use": ["Parse smart-home commands into JSON", "On-device only"],
            "limitations": "English only.",
            "license": "apache-2.0",
            "devices": ["pi5", "jetson-orin-nano"],
            "metrics_table": [
                {"artifact": "fp32", "exact_match": 0.9375, "perplexity": 1.234, "size_mb": 540.2, "pi5": "pass", "jetson-orin-nano": "pass"},
                {"artifact": "int4", "exact_match": 0.9, "perplexity": None, "size_mb": 98.0, "pi5": "fail (latency)"},
            ],
            "recipe": "quickstart.yaml",
            "command": "edgeft run recipes/quickstart.yaml",
        }
    )
    assert card.startswith("---\nbase_model: \"HuggingFaceTB/SmolLM2-135M-Instruct\"\nlicense: \"apache-2.0\"\n")
    assert f"# {NAME} {VERSION}" in card
    assert "| Artifact | Exact match | Perplexity | Size (MB) | pi5 | jetson-orin-nano |" in card
    assert "| fp32 | 0.938 | 1.23 | 540.2 | pass | pass |" in card
    assert "| int4 | 0.900 | n/a | 98.0 | fail (latency) | n/a |" in card
    assert "- Parse smart-home commands into JSON" in card
    assert "edgeft run recipes/quickstart.yaml" in card and "`quickstart.yaml`" in card
    assert "English only." in card


def test_model_card_tolerates_missing_keys() -> None:
    card = render_model_card({})
    for section in ("## Intended use", "## Training data", "## Method", "## Evaluation", "## Limitations", "## Reproduce", "## License"):
        assert section in card
    assert card.count("n/a") >= 7
    assert render_model_card({"metrics_table": [{"artifact": "int8"}]}).count("| int8 | n/a | n/a | n/a |") == 1


def test_model_card_shows_the_general_text_perplexity_when_validated() -> None:
    card = render_model_card({"devices": ["pi5"], "metrics_table": [
        {"artifact": "int8", "exact_match": 0.9, "perplexity": 4.1, "perplexity_general": 31.42, "size_mb": 146.0,
         "pi5": "pass"}]})
    assert "| Artifact | Exact match | Perplexity | General-text ppl | Size (MB) | pi5 |" in card
    assert "|---|---:|---:|---:|---:|:---:|" in card
    assert "| int8 | 0.900 | 4.10 | 31.42 | 146.0 | pass |" in card
