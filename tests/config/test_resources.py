"""Shipped and user resource folders: a user's file overrides the shipped one, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.config import find_resource, list_resources, load_device, resource_names
from edgeft.recipe import load_recipe
from edgeft.config import resources
from edgeft.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _own_pi5(folder: Path, threads: int = 3) -> Path:
    """A user profile named pi5 whose thread count differs from the shipped one."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "devices" / "pi5.yaml").read_text()
    assert "threads: 4" in text
    (folder / "pi5.yaml").write_text(text.replace("threads: 4", f"threads: {threads}"))
    return folder / "pi5.yaml"


def test_edgeft_home_overrides_a_shipped_profile(empty_cwd, tmp_path, monkeypatch):
    shipped = load_device("pi5")
    own = _own_pi5(tmp_path / "home" / "devices")
    monkeypatch.setenv("EDGEFT_HOME", str(tmp_path / "home"))
    assert load_device("pi5").cpu.threads == 3 != shipped.cpu.threads
    found = find_resource("devices", "pi5")
    assert found.path == own and found.origin == "user" and found.overrides == REPO / "devices" / "pi5.yaml"
    assert "(user; overrides the shipped" in found.describe()
    # every other profile still comes from the shipped folder
    assert resource_names("devices") == sorted(p.stem for p in (REPO / "devices").glob("*.yaml"))
    assert find_resource("devices", "host").origin == "shipped"
    res = CliRunner().invoke(cli, ["devices", "show", "pi5"])
    assert res.exit_code == 0, res.output
    assert "threads: 3" in res.output and f"# read from {own} (user; overrides the shipped" in res.output
    listed = CliRunner().invoke(cli, ["devices", "list"])
    assert "override the shipped ones: pi5" in listed.output and "shipped" in listed.output


def test_working_directory_folder_overrides_when_no_edgeft_home(empty_cwd):
    _own_pi5(empty_cwd / "devices", threads=2)
    assert load_device("pi5").cpu.threads == 2
    assert find_resource("devices", "pi5").describe().startswith("devices/pi5.yaml (user; overrides")


def test_user_recipe_by_name_overrides_the_shipped_one(empty_cwd):
    shipped = (REPO / "recipes" / "quickstart.yaml").read_text()
    (empty_cwd / "recipes").mkdir()
    (empty_cwd / "recipes" / "quickstart.yaml").write_text(shipped.replace("epochs: 1", "epochs: 2"))
    assert load_recipe("quickstart").finetune.epochs == 2
    assert {r.name: r.origin for r in list_resources("recipes")}["quickstart"] == "user"
    res = CliRunner().invoke(cli, ["recipes", "show", "quickstart"])
    assert res.exit_code == 0 and "# read from recipes/quickstart.yaml (user; overrides" in res.output


def test_installed_data_folder_wins_over_a_checkout(tmp_path, monkeypatch, empty_cwd):
    """Installed, the package's own data folder (edgeft/profiles) is the shipped layer."""
    pkg = tmp_path / "site" / "edgeft"
    _own_pi5(pkg / "profiles", threads=1)
    monkeypatch.setattr(resources.importlib.resources, "files", lambda name: pkg if name == "edgeft" else None)
    assert resources.shipped_dir("devices") == pkg / "profiles"
    assert find_resource("devices", "pi5").origin == "shipped" and load_device("pi5").cpu.threads == 1
    # a kind missing from the install falls back to the checkout holding the code
    assert resources.shipped_dir("export") == REPO / "export"


def test_no_folder_at_all_says_what_to_do(empty_cwd, monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "shipped_dir", lambda kind: None)
    with pytest.raises(ConfigError, match=r"no devices/ folder found.*\./devices does not exist"):
        load_device("pi5")
