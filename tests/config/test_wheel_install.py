"""The built wheel carries the device profiles, export presets and recipes, and finds them once installed
(an editable install finds the checkout's folders).

The wheel is built offline from a copy of the source and installed into a fresh virtual
environment; the third-party packages come from the running environment (a .pth file names its
site-packages, whose own .pth files, the editable install of edgeft among them, are not run), while
edgeft's code and data come from the wheel only. Commands run from an empty folder outside the
repository, where there is no devices/, export/ or recipes/ to fall back on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("edgeft", "devices", "export", "recipes", "pyproject.toml", "setup.py", "README.md")


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def _fresh_venv(tmp: Path, env: dict) -> tuple[Path, Path]:
    """A venv without pip whose .pth makes the running environment's third-party packages importable."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env).stdout.strip()
    (Path(site) / "_outer_site_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return py, venv / "bin" / "edgeft"


def _source_copy(tmp: Path) -> tuple[Path, dict]:
    """A copy of the sources (the build leaves no build/ or egg-info in the checkout) and a clean environment."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEFT_HOME", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", COLUMNS="160")
    (tmp / "empty").mkdir()
    return src, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv python, edgeft console script, empty cwd, env, wheel)``: a fresh venv holding only the wheel's edgeft."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, env = _source_copy(tmp)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         tmp, env)
    (wheel,) = dist.glob("edgeft-*.whl")
    py, edgeft = _fresh_venv(tmp, env)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], tmp, env)
    return py, edgeft, tmp / "empty", env, wheel


def test_wheel_holds_every_module_and_the_shipped_files(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "edgeft").rglob("*.py")}
    assert modules <= names, f"left out of the wheel: {sorted(modules - names)}"
    for kind, pkg in (("devices", "profiles"), ("export", "presets"), ("recipes", "recipes")):
        shipped = {f"edgeft/{pkg}/{p.name}" for p in (REPO / kind).iterdir() if p.is_file()}
        assert shipped and shipped <= names, f"{kind}/ files left out of the wheel: {sorted(shipped - names)}"
    templates = {p.relative_to(REPO).as_posix() for p in (REPO / "edgeft" / "validate" / "templates").iterdir()}
    assert templates and templates <= names, f"templates left out of the wheel: {sorted(templates - names)}"


def test_installed_edgeft_is_the_wheel(installed):
    py, _, cwd, env, _ = installed
    where = _run([str(py), "-c", "import edgeft, edgeft.config.resources as r; print(edgeft.__file__); "
                  "print(r.shipped_dir('devices'))"], cwd, env).stdout.split()
    venv = py.parent.parent
    assert Path(where[0]).is_relative_to(venv), where
    assert Path(where[1]).is_relative_to(venv) and Path(where[1]).name == "profiles", where


def test_installed_cli_lists_and_validates_the_shipped_files(installed):
    py, edgeft, cwd, env, _ = installed
    listed = _run([str(edgeft), "devices", "list"], cwd, env).stdout
    for p in (REPO / "devices").glob("*.yaml"):
        assert p.stem in listed, f"{p.stem} not listed:\n{listed}"
    recipes = _run([str(edgeft), "recipes", "list"], cwd, env).stdout
    for p in (REPO / "recipes").glob("*.yaml"):
        assert p.stem in recipes, f"{p.stem} not listed:\n{recipes}"
    ok = _run([str(edgeft), "recipes", "validate", "quickstart"], cwd, env).stdout
    assert ok.startswith("ok ") and ok.strip().endswith("edgeft/recipes/quickstart.yaml")
    assert str(py.parent.parent) in ok  # the installed recipe, not the checkout's
    shown = _run([str(edgeft), "devices", "show", "pi5"], cwd, env).stdout
    assert shown.startswith("name: pi5") and "(shipped)" in shown.splitlines()[-1]
    assert "onnx-kv" in _run([str(py), "-c", "from edgeft.config import preset_names; print(preset_names())"],
                             cwd, env).stdout


def test_installed_wheel_renders_a_report_page(installed):
    """report.html's templates come from the installed package, not the checkout."""
    py, _, cwd, env, _ = installed
    page = _run([str(py), "-c", "import sys; from edgeft.validate.html import render_html; "
                 "sys.stdout.write(render_html({'recipe': 'wheel <check>', 'passed': True}))"], cwd, env).stdout
    assert "<title>edgeft validate: wheel &lt;check&gt;</title>" in page and '<div class="banner pass">' in page
    assert page.rstrip().endswith("</html>")


def test_editable_install_finds_the_checkout_folders(tmp_path):
    src, env = _source_copy(tmp_path)
    py, edgeft = _fresh_venv(tmp_path, env)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-build-isolation", "-q",
          "-e", str(src)], tmp_path, env)
    cwd = tmp_path / "empty"
    where = _run([str(py), "-c", "import edgeft, edgeft.config.resources as r; print(edgeft.__file__); "
                  "print(r.shipped_dir('devices'))"], cwd, env).stdout.split()
    assert Path(where[0]).is_relative_to(src) and Path(where[1]) == src / "devices", where
    listed = _run([str(edgeft), "devices", "list"], cwd, env).stdout
    assert all(p.stem in listed for p in (REPO / "devices").glob("*.yaml")), listed
    assert _run([str(edgeft), "recipes", "validate", "quickstart"], cwd, env).stdout.startswith("ok ")
