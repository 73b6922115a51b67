"""One check that an exporter or quantize scheme described its output: ``artifact.json`` beside the files."""

from __future__ import annotations

from pathlib import Path


def check_artifact(folder: Path, **expected):
    """Load ``folder/artifact.json`` and check it against the folder: its files exist (and, for a folder artifact,
    are every file there but the run's stage record), the weights are among them, the size is theirs, the main file is one of them; then
    each ``expected`` field. Returns the description."""
    from edgeft.artifacts import ARTIFACT_FILE, Artifact, size_of

    folder = Path(folder)
    a = Artifact.load(folder)
    on_disk = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    assert all((folder / f).is_file() for f in a.files), (a.files, on_disk)
    if a.opens == "folder":  # a pipeline stage folder also holds the run's record of the stage, written after it
        assert a.files == [f for f in on_disk if f not in (ARTIFACT_FILE, "stage.json")], (a.files, on_disk)
    else:
        assert a.files == [a.main_file] and a.load_path(folder).is_file()
    assert a.weights and set(a.weights) <= set(a.files) and a.main_file in a.weights
    assert a.size_bytes == sum((folder / f).stat().st_size for f in a.weights) == size_of(a.load_path(folder),
                                                                                           a.format) > 0
    for key, value in expected.items():
        assert getattr(a, key) == value, (key, getattr(a, key), value)
    return a


def check_run(run_dir: Path, report: dict, kind: str, bundle: Path | None = None) -> dict:
    """Every artifact a pipeline run validated (not the base) is described beside its files, as the report shows
    it (runtime format, precision, int8 mode, size); each one the bundle ships is its described files plus the
    description. Returns name -> description."""
    from edgeft.artifacts import ARTIFACT_FILE

    if hasattr(report, "to_dict"):  # the typed report validate returns
        report = report.to_dict()
    out = {}
    for name, r in report["artifacts"].items():
        if r["role"] == "base":
            continue
        path = Path(r["path"])
        folder = path if path.is_dir() else path.parent
        assert folder.is_relative_to(run_dir), (name, folder)
        a = out[name] = check_artifact(folder, name=name, kind=kind, runtime=r["format"], precision=r["precision"],
                                       int8_mode=r["int8_mode"], size_bytes=r["size_bytes"])
        assert a.load_path(folder) == path
        shipped = bundle / "artifacts" / name if bundle is not None else None
        if shipped is not None and shipped.is_dir():
            assert sorted(f.name for f in shipped.iterdir()) == sorted([*a.files, ARTIFACT_FILE]), name
    return out
