"""Where edgeft finds device profiles (``devices/``), export presets (``export/``) and recipes (``recipes/``).

Each kind is read from two layers, the user's on top of the shipped one:

1. the user folder: ``$EDGEFT_HOME/<kind>/`` when ``EDGEFT_HOME`` is set, else ``./<kind>/`` when
   the working directory has one;
2. the shipped folder: the files installed with the package (``edgeft/profiles``,
   ``edgeft/presets``, ``edgeft/recipes``, found through :mod:`importlib.resources`; setup.py maps
   them from the repository's ``devices/``, ``export/`` and ``recipes/``), or, when edgeft runs from
   a source checkout (an editable install, or ``PYTHONPATH``), those folders of the checkout.

A user file named like a shipped one overrides it; :func:`find_resource` says which one won
(:attr:`Resource.origin`, :meth:`Resource.describe`), and the loader logs it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
from pathlib import Path
from typing import Literal, Optional

from edgeft.errors import ConfigError

__all__ = ["RESOURCE_KINDS", "SHIPPED_PACKAGES", "Resource", "find_resource", "list_resources", "resource_layers",
           "resource_names", "shipped_dir", "user_dir"]

log = logging.getLogger(__name__)

#: Resource kinds: the folder names users and docs know them by.
RESOURCE_KINDS = ("devices", "export", "recipes")

#: The data folder each kind installs as, inside the ``edgeft`` package (see setup.py).
SHIPPED_PACKAGES = {"devices": "profiles", "export": "presets", "recipes": "recipes"}

_YAML_SUFFIXES = (".yaml", ".yml")

# edgeft/config/resources.py -> edgeft/ -> the folder holding the package: a source checkout's root
# when pyproject.toml sits there.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent

Origin = Literal["user", "shipped"]


@dataclasses.dataclass(frozen=True)
class Resource:
    """One YAML file of a kind, the layer it came from, and the shipped file it overrides (if any)."""

    kind: str
    name: str
    path: Path
    origin: Origin
    overrides: Optional[Path] = None

    def describe(self) -> str:
        """``devices/pi5.yaml (user; overrides the shipped .../pi5.yaml)``-style provenance."""
        where = _display(self.path)
        if self.overrides is not None:
            return f"{where} (user; overrides the shipped {_display(self.overrides)})"
        return f"{where} ({self.origin})"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_kind(kind: str) -> None:
    if kind not in RESOURCE_KINDS:
        raise ConfigError(f"unknown resource folder {kind!r}; valid choices: {', '.join(RESOURCE_KINDS)}")


def user_dir(kind: str, existing: bool = True) -> Optional[Path]:
    """The user folder for ``kind``: ``$EDGEFT_HOME/<kind>`` if EDGEFT_HOME is set, else ``./<kind>``.

    With ``existing`` (the default) None when that folder does not exist; without, the folder new
    user files go to (``edgeft devices add``), which may still have to be created.
    """
    _check_kind(kind)
    home = os.environ.get("EDGEFT_HOME")
    folder = (Path(home).expanduser() if home else Path.cwd()) / kind
    return folder if not existing or folder.is_dir() else None


def shipped_dir(kind: str) -> Optional[Path]:
    """The folder of ``kind`` files that came with edgeft: installed package data, else the source checkout's."""
    _check_kind(kind)
    root = importlib.resources.files("edgeft").joinpath(SHIPPED_PACKAGES[kind])
    if isinstance(root, Path) and root.is_dir():  # a wheel install (unzipped, as pip installs it)
        return root
    checkout = _PACKAGE_PARENT / kind
    if (_PACKAGE_PARENT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def resource_layers(kind: str) -> list[tuple[Origin, Path]]:
    """``[(origin, folder)]`` of the existing folders for ``kind``, highest priority first.

    A user folder that is the shipped folder itself (the working directory is the checkout) counts once, as
    shipped.
    """
    shipped = shipped_dir(kind)
    user = user_dir(kind)
    layers: list[tuple[Origin, Path]] = []
    if user is not None and (shipped is None or user.resolve() != shipped.resolve()):
        layers.append(("user", user))
    if shipped is not None:
        layers.append(("shipped", shipped))
    return layers


def _files(folder: Path) -> dict[str, Path]:
    """``{stem: file}`` of the YAML files in ``folder`` (``.yaml`` before ``.yml`` for one stem)."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir(), key=lambda p: (p.stem, _YAML_SUFFIXES.index(p.suffix)
                                                     if p.suffix in _YAML_SUFFIXES else 9)):
        if f.suffix in _YAML_SUFFIXES and f.is_file():
            found.setdefault(f.stem, f)
    return found


def _no_folder(kind: str) -> ConfigError:
    home = os.environ.get("EDGEFT_HOME")
    where = f"$EDGEFT_HOME/{kind} ({Path(home).expanduser() / kind})" if home else f"./{kind}"
    return ConfigError(f"no {kind}/ folder found: edgeft ships none here (a broken install?) and {where} does not "
                       f"exist; reinstall edgeft, or create {where}")


def list_resources(kind: str) -> list[Resource]:
    """Every ``kind`` file edgeft reads, one per name (a user file hides the shipped one), sorted by name.

    Raises ConfigError when neither layer exists.
    """
    layers = resource_layers(kind)
    if not layers:
        raise _no_folder(kind)
    by_name: dict[str, Resource] = {}
    for origin, folder in layers:
        for name, path in _files(folder).items():
            if name not in by_name:
                by_name[name] = Resource(kind, name, path, origin)
            elif by_name[name].overrides is None and origin == "shipped":
                by_name[name] = dataclasses.replace(by_name[name], overrides=path)
    return [by_name[n] for n in sorted(by_name)]


def resource_names(kind: str) -> list[str]:
    """Names (file stems) of every ``kind`` file edgeft reads, sorted."""
    return [r.name for r in list_resources(kind)]


def find_resource(kind: str, name: str) -> Optional[Resource]:
    """The ``kind`` file named ``name`` edgeft reads (the user's when both layers have one), else None."""
    found = next((r for r in list_resources(kind) if r.name == name), None)
    if found is not None and found.overrides is not None and found.path not in _logged:
        _logged.add(found.path)  # once per file and process: a pipeline loads a profile many times
        log.info("%s %r: using %s", kind, name, found.describe())
    return found


_logged: set[Path] = set()
