"""Start a new device profile from an existing one (``edgeft devices add``), keeping its comments.

The copy is edited with ruamel.yaml in round-trip mode: ``name`` is set, ``description`` and
``source`` get "edit me" placeholders and the header comment is replaced, while every other key
keeps its value, its order and the comment next to it (the arithmetic behind the numbers).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import textwrap
from pathlib import Path
from typing import Union

from edgeft.config.resources import find_resource, resource_layers, resource_names, user_dir
from edgeft.errors import ConfigError

__all__ = ["EDIT_ME", "NAME_PATTERN", "NewProfile", "add_profile", "new_profile_text"]

#: Device names: lowercase letters and digits, single dashes between them (``jetson-orin-nx``).
NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

#: ``source:`` of a profile written by ``edgeft devices add``; shipped profiles must not contain it.
EDIT_ME = "edit me"

_YAML_SUFFIXES = (".yaml", ".yml")
_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class NewProfile:
    """What :func:`add_profile` wrote: the file, the profile it copies, and whether edgeft reads its folder."""

    path: Path
    copied_from: str
    read_here: bool
    read_dir: Path  # the user devices/ folder edgeft reads (it may not exist yet)


def display_path(path: Path) -> str:
    """A path as people read it in messages: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(_YAML_SUFFIXES)


def _round_trip():
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip: comments, key order, flow/block style and quoting are kept
    rt.width = _WIDTH
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    return rt


def _folded(text: str):
    """``text`` as a ``>-`` block scalar folded at :data:`_WIDTH` columns."""
    from ruamel.yaml.scalarstring import FoldedScalarString

    lines = textwrap.wrap(text, width=_WIDTH - 2, break_on_hyphens=False, break_long_words=False)
    folded = FoldedScalarString(" ".join(lines))
    pos, ends = 0, []
    for line in lines[:-1]:
        pos += len(line)
        ends.append(pos)  # the space after each line, where the emitter folds
        pos += 1
    folded.fold_pos = ends
    return folded


def _placeholders(name: str, copied_from: str) -> tuple[str, dict[str, str]]:
    """The header comment and the replaced top-level values of a profile started from ``copied_from``."""
    header = (f"{name}: device profile started from {copied_from} by `edgeft devices add`; edit every number.\n"
              f"Use it by listing it in a recipe's validate.devices; inspect it with: edgeft devices show {name}")
    still = f"copied from {copied_from}, whose numbers these still are"
    values = {
        "description": f"{EDIT_ME}: what device this stands for (SoC, cores, RAM, the runtime the model uses); {still}",
        "source": f"{EDIT_ME}: the datasheet or measurement behind every number, and the arithmetic for each "
                  f"estimate ({still})",
    }
    return header, values


def new_profile_text(text: str, name: str, copied_from: str) -> str:
    """The text of a profile copied from ``text`` (another profile's YAML): the header comment, ``name``,
    ``description`` and ``source`` replaced ("edit me" placeholders for the last two); every other key,
    its value and its comments kept as written.

    Raises ConfigError when ``text`` is not a YAML mapping.
    """
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    rt = _round_trip()
    try:
        data = rt.load(text)
    except YAMLError as e:
        raise ConfigError(f"profile {copied_from!r}: invalid YAML ({e})") from None
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"profile {copied_from!r}: top level must be a mapping of keys (key: value)")
    header, values = _placeholders(name, copied_from)
    if data.fa.flow_style():  # `{name: ..., ...}` on one line: the new profile gets one key per line
        data.fa.set_block_style()
    data.ca.comment = None  # the header comment describes the copied device
    data.yaml_set_start_comment(header)
    data["name"] = name
    for key, value in values.items():
        data[key] = _folded(value)
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def _source_file(name_or_path: str) -> Path:
    """The YAML file ``load_device(name_or_path)`` reads (it has been loaded successfully)."""
    if _looks_like_path(name_or_path):
        return Path(name_or_path)
    found = find_resource("devices", name_or_path)
    assert found is not None  # load_device found it
    return found.path


def _check_free(name: str, folder: Path) -> None:
    """Raise ConfigError when ``name`` is taken in ``folder`` or among the profiles edgeft reads."""
    target = folder / f"{name}.yaml"
    taken = next((folder / f"{name}{s}" for s in _YAML_SUFFIXES if (folder / f"{name}{s}").exists()), None)
    hint = "pick another name, or edit that file"
    try:
        known = resource_names("devices")
    except ConfigError:  # no devices/ folder at all: nothing to clash with
        known = []
    if taken is None and name in known:
        found = find_resource("devices", name)
        taken = found.path
        if found.origin == "shipped":
            own = user_dir("devices", existing=False) / f"{name}.yaml"
            hint = (f"pick another name; to change the shipped profile, copy it to {display_path(own)} and edit "
                    f"the copy (a user profile overrides the shipped one of the same name)")
    if taken is not None:
        raise ConfigError(f"{display_path(target)}: a device profile named {name!r} already exists "
                          f"({display_path(taken)}); {hint}")


def add_profile(name: str, copy_from: str = "pi5", out: Union[str, os.PathLike, None] = None) -> NewProfile:
    """Write ``<out>/<name>.yaml``, a copy of the profile ``copy_from`` (a name or a .yaml path) with
    ``name`` set and "edit me" placeholders for ``description`` and ``source``.

    ``out`` defaults to the user's devices/ folder (``$EDGEFT_HOME/devices``, else ``./devices``; see
    :mod:`edgeft.config.resources`), created when missing.
    Raises ConfigError (exit code 2) for an invalid name, a name that is already taken (in ``out``
    or among the profiles edgeft reads), an unknown ``copy_from``, or a written file that does not
    load (it is removed again).
    """
    from edgeft.config.loader import load_device

    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r}: invalid device name; use lowercase letters, digits and single dashes "
            f"(e.g. 'jetson-orin-nx'): the name is also the file name and how recipes refer to it"
        )
    read_dir = user_dir("devices", existing=False)
    folder = Path(out) if out is not None else read_dir
    _check_free(name, folder)
    profile = load_device(copy_from)  # unknown names fail listing the valid ones
    text = new_profile_text(_source_file(copy_from).read_text(encoding="utf-8"), name, profile.name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.yaml"
    tmp = folder / f".{name}.yaml.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    try:
        load_device(target)
    except ConfigError as e:
        target.unlink()
        raise ConfigError(f"{display_path(target)}: the new profile does not load, so it was removed:\n{e}") from None
    read = [d.resolve() for _, d in resource_layers("devices")]
    return NewProfile(target, profile.name, target.parent.resolve() in read, read_dir)

