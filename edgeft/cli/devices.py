"""edgeft devices list|show|add|template"""

from __future__ import annotations

import os
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Optional, Union

import click

#: Device names: lowercase letters and digits, single dashes between them (``jetson-orin-nx``).
NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

#: ``source:`` of a profile written by ``edgeft devices add``; shipped profiles must not contain it.
EDIT_ME = "edit me"

_YAML_SUFFIXES = (".yaml", ".yml")


@click.group("devices")
def devices_grp():
    """Device profiles (devices/*.yaml)."""


@devices_grp.command("list")
def list_cmd():
    """One line per profile: name, class, threads, memory budget, precisions."""
    from rich.console import Console
    from rich.table import Table

    from edgeft.config.loader import list_devices

    t = Table()
    for c in ("name", "class", "threads", "model RAM MiB", "GB/s", "precisions", "formats"):
        t.add_column(c, no_wrap=c in ("name", "class"))  # never truncate the name; long lists wrap
    for d in list_devices():
        t.add_row(d.name, d.class_, str(d.cpu.threads), str(d.memory.model_budget_mb), f"{d.memory.bandwidth_gbps:g}",
                  ", ".join(d.precisions), ", ".join(d.formats))
    Console(width=max(100, Console().width)).print(t)


@devices_grp.command("show")
@click.argument("name")
def show_cmd(name):
    """Print a profile with every field and its source."""
    import yaml

    from edgeft.config.loader import load_device

    d = load_device(name)
    click.echo(yaml.safe_dump(d.model_dump(by_alias=True, exclude_none=True), sort_keys=False, width=100))


@devices_grp.command("add")
@click.argument("name")
@click.option("--from", "from_", default="pi5", show_default=True, metavar="PROFILE",
              help="Existing profile (name or .yaml path) to copy.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write NAME.yaml into (default: the devices/ folder edgeft reads).")
def add_cmd(name, from_, out):
    """Start a new profile NAME as a copy of an existing one, then print what to edit."""
    path = add_profile(name, from_, out)
    shown = _display(path)
    source = Path(from_).stem if _looks_like_path(from_) else from_
    read_here = _is_read_folder(path.parent)
    click.echo(f"wrote {shown} (a copy of {source}: every number in it is still {source}'s)")
    click.echo("next steps:")
    click.echo(f"  1. edit {shown}: cpu, memory, compute, formats, precisions, int8_modes, op_allowlist,")
    click.echo("     static_shapes, max_model_mb, onchip_param_mb and budgets (each field is explained in")
    click.echo("     devices/TEMPLATE.yaml.example and docs/devices.md)")
    click.echo("  2. replace description and source: say what device it stands for, name the datasheet or")
    click.echo("     measurement behind every number and give the arithmetic for each estimate")
    click.echo(f"  3. check it: edgeft devices show {name if read_here else shown}")
    if read_here:
        click.echo(f"  4. use it: add {name} to validate.devices in a recipe, then run edgeft validate RECIPE")
    else:
        read = _read_folder()
        where = f"{_display(read)}/" if read else "a devices/ folder"
        click.echo(f"  4. use it: recipes name profiles found in the devices/ folder edgeft reads ({where});")
        click.echo(f"     move {path.name} there, then add {name} to validate.devices in a recipe")
        if path.parent.name == "devices":
            click.echo(f"     (or set EDGEFT_HOME={_display(path.parent.parent)}: edgeft then reads only the "
                       f"profiles in {_display(path.parent)}/)")


@devices_grp.command("template")
def template_cmd():
    """Print a profile template documenting every field (from the schema's field descriptions)."""
    click.echo(profile_template(), nl=False)


# --------------------------------------------------------------------------- add


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(_YAML_SUFFIXES)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_folder() -> Optional[Path]:
    from edgeft.config.loader import resource_dir
    from edgeft.errors import ConfigError

    try:
        return resource_dir("devices")
    except ConfigError:
        return None


def _is_read_folder(folder: Path) -> bool:
    read = _read_folder()
    return read is not None and read.resolve() == folder.resolve()


def _source_file(name_or_path: str) -> Path:
    """The YAML file ``load_device(name_or_path)`` reads (it has been loaded successfully)."""
    if _looks_like_path(name_or_path):
        return Path(name_or_path)
    folder = _read_folder()
    assert folder is not None  # load_device found it there
    return next(folder / f"{name_or_path}{s}" for s in _YAML_SUFFIXES if (folder / f"{name_or_path}{s}").is_file())


def _top_level_blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    """``{key: (first line, end line)}`` for each top-level ``key:`` and its indented continuation."""
    blocks: dict[str, tuple[int, int]] = {}
    starts = [(i, m.group(1)) for i, line in enumerate(lines)
              if (m := re.match(r"([A-Za-z_][\w-]*)\s*:", line))]
    for n, (i, key) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        # stop before comment lines and blank lines that lead into the next key
        while end - 1 > i and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1
        blocks[key] = (i, end)
    return blocks


def _quoted(text: str) -> str:
    import json

    return json.dumps(text)  # a double-quoted YAML scalar


def _placeholders(name: str, copied_from: str) -> tuple[list[str], dict[str, str]]:
    """Header comment lines and the replaced top-level values of a profile started from ``copied_from``."""
    header = [f"# {name}: device profile started from {copied_from} by `edgeft devices add`; edit every number.",
              f"# Use it by listing it in a recipe's validate.devices; inspect it with: edgeft devices show {name}"]
    still = f"copied from {copied_from}, whose numbers these still are"
    values = {
        "name": name,
        "description": f"{EDIT_ME}: what device this stands for (SoC, cores, RAM, the runtime the model uses); {still}",
        "source": f"{EDIT_ME}: the datasheet or measurement behind every number, and the arithmetic for each "
                  f"estimate ({still})",
    }
    return header, values


def new_profile_text(text: str, name: str, copied_from: str) -> str:
    """The text of a profile copied from ``text`` (another profile's YAML): the header comment, ``name``,
    ``description`` and ``source`` replaced ("edit me" placeholders for the last two); every other line
    (the numbers and their comments) kept as written.

    Raises ValueError when ``text`` has no top-level ``name:``, ``description:`` or ``source:`` line.
    """
    header, values = _placeholders(name, copied_from)
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the header comment describes the copied device
    blocks = _top_level_blocks(lines)
    missing = [k for k in values if k not in blocks]
    if missing:
        raise ValueError(f"no top-level {', '.join(missing)} line")
    for key, (start, end) in sorted(blocks.items(), key=lambda kv: -kv[1][0]):
        if key == "name":
            lines[start:end] = [f"name: {_scalar(name)}"]
        elif key in values:
            lines[start:end] = [f"{key}: >-"] + textwrap.wrap(values[key], width=_WIDTH, initial_indent="  ",
                                                              subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(header + lines) + "\n"


def _dumped_profile_text(profile, name: str, copied_from: str) -> str:
    """Fallback of :func:`new_profile_text` for a source it cannot edit line by line (comments are lost)."""
    import yaml

    header, values = _placeholders(name, copied_from)
    data = profile.model_dump(by_alias=True, exclude_none=True)
    data.update(values)
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, width=100)


def add_profile(name: str, copy_from: str = "pi5", out: Union[str, os.PathLike, None] = None) -> Path:
    """Write ``<out>/<name>.yaml``, a copy of the profile ``copy_from`` (a name or a .yaml path) with
    ``name`` set and "edit me" placeholders for ``description`` and ``source``.

    ``out`` defaults to the ``devices/`` folder the loader reads (see ``edgeft.config.resource_dir``).
    Raises ConfigError (exit code 2) for an invalid name, a name that is already taken (in ``out``
    or among the profiles edgeft reads), an unknown ``copy_from``, or a written file that does not
    load (it is removed again).
    """
    from edgeft.config.loader import device_names, load_device
    from edgeft.errors import ConfigError

    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r}: invalid device name; use lowercase letters, digits and single dashes "
            f"(e.g. 'jetson-orin-nx'): the name is also the file name and how recipes refer to it"
        )
    if out is not None:
        folder = Path(out)
    else:
        folder = _read_folder()
        if folder is None:
            raise ConfigError("no devices/ folder found; run from the project folder, set EDGEFT_HOME, or pass --out")
    taken = [folder / f"{name}{s}" for s in _YAML_SUFFIXES if (folder / f"{name}{s}").exists()]
    if not taken and not _is_read_folder(folder) and _read_folder() is not None and name in device_names():
        taken = [_source_file(name)]  # written elsewhere, it would still clash with a profile edgeft reads
    if taken:
        raise ConfigError(
            f"{_display(folder / f'{name}.yaml')}: a device profile named {name!r} already exists "
            f"({_display(taken[0])}); pick another name, or edit that file"
        )
    profile = load_device(copy_from)  # unknown names fail listing the valid ones
    src = _source_file(copy_from)
    try:
        text = new_profile_text(src.read_text(encoding="utf-8"), name, profile.name)
    except ValueError:
        text = _dumped_profile_text(profile, name, profile.name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.yaml"
    target.write_text(text, encoding="utf-8")
    try:
        load_device(target)
    except ConfigError as e:
        target.unlink()
        raise ConfigError(f"{_display(target)}: the new profile does not load, so it was removed:\n{e}") from None
    return target


# --------------------------------------------------------------------------- template

#: Comments for sections whose schema field has no description.
_SECTION_NOTES = {
    "cpu": "The CPU the model runs on, or that feeds the accelerator.",
    "memory": "RAM and memory bandwidth (the bandwidth bounds decode speed of a large model).",
    "compute": "Sustained compute; a datasheet peak times a utilisation factor, with the arithmetic in source.",
}

#: Example values written into the template (a Raspberry Pi 5-like board); None: shown commented out.
_EXAMPLE: dict[str, Any] = {
    "name": "my-board",
    "class": "edge",
    "description": "What device this stands for: board or SoC, cores, RAM, the runtime the model uses. "
                   "Say which numbers are product targets rather than measurements.",
    "source": "Datasheet names and measurements behind every number, and the arithmetic for each estimate, "
              "e.g. bandwidth estimate: 4267 MT/s x 4 B = 17.1 GB/s theoretical, x0.6 for a streaming read "
              "= ~10 GB/s.",
    "cpu": {"arch": "arm64", "cores": 4, "threads": 4},
    "memory": {"total_mb": 8192, "model_budget_mb": 6144, "bandwidth_gbps": 10.0},
    "compute": {"fp32_gflops": 90.0, "int8_gops": 300.0},
    "formats": ["onnx"],
    "precisions": ["fp32", "int8", "int4"],
    "int8_modes": ["weight-only", "dynamic", "static", "full-integer"],
    "op_allowlist": None,
    "static_shapes": False,
    "max_model_mb": None,
    "onchip_param_mb": None,
    "tflite": None,
    "budgets": {"ttft_ms": 2000, "decode_tok_s": 8, "per_inference_ms": None, "ram_mb": 2048, "size_mb": 1024},
    "remote": None,
}

#: Values for the commented-out lines (optional fields left unset in the example).
_COMMENTED: dict[str, Any] = {
    "op_allowlist": ["QuantizeLinear", "DequantizeLinear", "MatMul", "Add", "Softmax"],
    "max_model_mb": 4096,
    "onchip_param_mb": 8,
    "per_inference_ms": 50,
    "tflite": {"runtime": "edgetpu", "op_allowlist": ["CONV_2D", "FULLY_CONNECTED", "ADD", "SOFTMAX"],
               "innermost_dims": 3},
    "remote": {"ssh": "pi@raspberrypi.local", "python": "python3", "port": 22},
}

_WIDTH = 100


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _choices(tp: Any) -> tuple[list[str], bool]:
    """Literal choices of ``tp`` or of its list items, and whether it is a list."""
    tp = _strip_optional(tp)
    is_list = typing.get_origin(tp) is list
    inner = typing.get_args(tp)[0] if is_list and typing.get_args(tp) else tp
    if typing.get_origin(inner) is typing.Literal:
        return [str(a) for a in typing.get_args(inner)], is_list
    return [], is_list


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    tp = _strip_optional(tp)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: Any) -> str:
    import yaml

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value}"
    if isinstance(value, list):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = str(value)
    if re.fullmatch(r"[A-Za-z][\w.@-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return _quoted(text)


def _default_text(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        if _is_model(type(value)):
            unset = all(v is None for v in value.model_dump().values())
            return "all unset" if unset else "every field at its default"
        return _scalar(value)
    if field.default is PydanticUndefined:
        return ""
    return "null" if field.default is None else _scalar(field.default)


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
                         break_on_hyphens=False)


def _render(model_cls, values: dict, indent: str = "", spaced: bool = False) -> list[str]:
    """YAML lines for ``model_cls``: each field preceded by a comment from its schema description.

    A field whose example value is None is written commented out, with a value from ``_COMMENTED``.
    """
    out: list[str] = []
    for attr, field in model_cls.model_fields.items():
        key = field.alias or attr
        note = field.description or _SECTION_NOTES.get(key, "")
        if field.is_required():
            note += " Required."
        else:
            default = _default_text(field)
            note += f" Optional; default: {default}." if default else " Optional."
        choices, is_list = _choices(field.annotation)
        if choices:
            note += f" {'Each one of' if is_list else 'One of'}: {' | '.join(choices)}."
        if spaced and out:
            out.append("")
        out += _comment(note.strip(), indent)
        value = values.get(key)
        shown = _COMMENTED.get(key) if value is None else value
        if _is_model(field.annotation):
            lines = [f"{indent}{key}:"] + _render(_strip_optional(field.annotation), shown or {}, indent + "  ")
        elif isinstance(shown, str) and len(shown) > 60:
            lines = [f"{indent}{key}: >-"] + textwrap.wrap(shown, width=_WIDTH, initial_indent=f"{indent}  ",
                                                           subsequent_indent=f"{indent}  ")
        else:
            lines = [f"{indent}{key}: {_scalar(shown)}"]
        if value is None:  # optional and unset: commented out; removing the first '# ' enables it
            lines = [f"{indent}# {line[len(indent):]}" for line in lines]
        out += lines
    return out


def profile_template() -> str:
    """A commented device profile: every field of :class:`~edgeft.config.schema.DeviceProfile` with its
    description, whether it is required, its default and its choices, and an example value (optional
    fields left unset are shown commented out). Saved as ``devices/TEMPLATE.yaml.example``."""
    from edgeft.config.schema import DeviceProfile

    header = [
        "# Device profile template: every field with what it means, whether it is required, its default",
        "# and its choices. Generated from edgeft/config/schema.py; regenerate with",
        "#   edgeft devices template > devices/TEMPLATE.yaml.example",
        "# Start a new profile with `edgeft devices add NAME --from PROFILE` (copies a shipped profile), or",
        "# copy this file to devices/NAME.yaml, set name: NAME and replace every value. The values below",
        "# are an example (a Raspberry Pi 5-like board), not defaults; '# key: value' lines are optional",
        "# fields left unset. Units: MiB for memory and sizes, GB/s, GFLOP/s and GOP/s, ms, tokens/s.",
        "",
    ]
    return "\n".join(header + _render(DeviceProfile, _EXAMPLE, spaced=True)) + "\n"
