"""Atomic writes: the file gets the permissions a plain open() would give, and a failed write leaves nothing."""

import os
import stat

import pytest

from edgeft.fileio import atomic_write, atomic_write_text


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "artifact.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644  # not mkstemp's 0600: bundles are read by other users
    assert f.read_text() == "{}"


def test_failed_write_leaves_nothing(tmp_path):
    def boom(f):
        f.write("half")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", boom)
    assert list(tmp_path.iterdir()) == []
