"""Load recipes, device profiles and export presets from YAML, with errors people can act on.

Every problem is reported as a :class:`~edgeft.errors.ConfigError` whose message names the file,
the dotted key path inside it and the fix, one line per problem, the most actionable line first::

    recipes/q.yaml: finetune.lerning_rate: unknown key; did you mean 'learning_rate'? (valid keys: ...)
    devices/pi5.yaml: memory.bandwidth_gbps: Input should be greater than 0 (got -1)

Device profiles, presets and recipes are referenced by name (``devices/<name>.yaml``,
``export/<name>.yaml``, ``recipes/<name>.yaml``): the user's folder over the shipped one, see
:mod:`edgeft.config.resources`.
"""

from __future__ import annotations

import difflib
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError

from edgeft.config.resources import find_resource, resource_names
from edgeft.config.schema import DeviceProfile, ExportPreset, Recipe
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "YAML_SUFFIXES",
    "apply_overrides",
    "check_options",
    "device_names",
    "display_path",
    "format_validation_error",
    "list_devices",
    "list_presets",
    "load_device",
    "load_preset",
    "parse_recipe",
    "load_yaml",
    "override_origin",
    "parse_model",
    "preset_names",
    "preset_source",
    "resolve_recipe_path",
    "unknown_choice",
]

YAML_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------- messages


def display_path(path: Path) -> str:
    """A path as people should read it in messages: relative to the cwd when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key; let the default constructor report it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first defined at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Union[str, os.PathLike]) -> dict:
    """Parse a YAML file whose top level is a mapping.

    Raises ConfigError naming the file (and the line for syntax errors and duplicate keys).
    """
    shown = str(path)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{shown}: file not found")
    if p.is_dir():
        raise ConfigError(f"{shown}: is a folder, expected a .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or "syntax error"
        hint = ""
        ctx = e.context_mark
        if e.problem and e.context and ctx is not None and mark is not None and ctx.line != mark.line:
            hint = f" ({e.context} at line {ctx.line + 1})"
        if "'\\t'" in problem:
            hint += "; indent with spaces, not tabs"
        raise ConfigError(f"{shown}{where}: invalid YAML{at}: {problem}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: invalid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{shown}: file is empty; expected a mapping of keys (key: value)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{shown}: top level must be a mapping of keys (key: value), got {_kind_of(data)}"
        )
    return data


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --------------------------------------------------------------------------- validation errors


def _unwrap(tp: Any) -> Any:
    """Strip Optional[...] / Annotated[...] so the interesting type is left."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin is Union or origin is getattr(types, "UnionType", Union):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_key(name: str, field: Any) -> str:
    return field.alias or name


def _valid_keys(model_cls: type[BaseModel]) -> list[str]:
    return [_field_key(n, f) for n, f in model_cls.model_fields.items()]


def _find_field(model_cls: type[BaseModel], key: Any) -> Optional[tuple[str, Any]]:
    for name, field in model_cls.model_fields.items():
        if key == field.alias or key == name:
            return name, field
    return None


def _union_members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is getattr(types, "UnionType", Union):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return []


def _walk(model_cls: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], Any, Any]:
    """Follow a pydantic ``loc`` through nested models, lists and dicts.

    Returns ``(display parts, type holding the last component, type of the last component)``.
    Union member tags that pydantic inserts (e.g. ``'list[str]'``) are dropped from the display.
    """
    parts: list[str] = []
    container: Any = model_cls
    current: Any = model_cls
    for comp in loc:
        current = _unwrap(current)
        members = _union_members(current)
        if members and isinstance(comp, str):
            # pydantic tags union branches with the member's repr; keep following that branch
            match = next((m for m in members if _type_tag(m) == comp), None)
            if match is not None:
                current = match
                continue
        container = current
        parts.append(str(comp))
        if _is_model(current):
            found = _find_field(current, comp)
            current = found[1].annotation if found else None
        elif typing.get_origin(current) in (list, tuple, set, frozenset) or current in (list, tuple):
            args = typing.get_args(current)
            current = args[0] if args else None
        elif typing.get_origin(current) is dict:
            args = typing.get_args(current)
            current = args[1] if len(args) == 2 else None
        else:
            current = None
    return parts, _unwrap(container) if container is not None else None, current


def _type_tag(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _literal_choices(tp: Any) -> list[str]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    return []


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fields_named(model_cls: type[BaseModel], key: str, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of every field called ``key`` anywhere under ``model_cls``."""
    hits: list[str] = []
    if depth > 6:
        return hits
    for name, field in model_cls.model_fields.items():
        shown = _field_key(name, field)
        path = f"{prefix}{shown}"
        if key in (shown, name):
            hits.append(path)
        inner = _unwrap(field.annotation)
        if typing.get_origin(inner) is list:
            args = typing.get_args(inner)
            inner = _unwrap(args[0]) if args else None
            path = f"{path}.N"
        if _is_model(inner):
            hits.extend(_fields_named(inner, key, f"{path}.", depth + 1))
    return hits


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return ""
    return " (got null)" if value is None else f" (got {_short(value)})"


def _describe(err: dict, root: type[BaseModel], prefix: str = "", noun: str = "key",
              owner: str = "") -> tuple[int, str, str, str]:
    """One error as (rank, dotted path, message, got). Lower rank = more actionable = shown first.

    ``prefix`` is the key path of ``root`` inside its file; ``noun``/``owner`` word an unknown key
    (``unknown option for scheme int4-rtn``).
    """
    loc = tuple(err.get("loc", ()))
    etype = err.get("type", "")
    parts, container, field_type = _walk(root, loc)
    field_type = _unwrap(field_type)
    path = ".".join([prefix] * bool(prefix) + parts) or "(top level)"
    value = err.get("input")

    if etype == "extra_forbidden" and _is_model(container):
        key = str(loc[-1]) if loc else ""
        valid = _valid_keys(container)
        what = f"unknown {noun}{f' for {owner}' if owner else ''}"
        match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if match:
            return 0, path, f"{what}; did you mean {match[0]!r}? (valid {noun}s: {', '.join(valid)})", ""
        elsewhere = [p for p in _fields_named(root, key) if p != path]
        if elsewhere:
            return 1, path, (
                f"{what} here; it belongs under {', '.join(elsewhere)} (valid {noun}s here: {', '.join(valid)})"
            ), ""
        return 2, path, f"{what} (valid {noun}s: {', '.join(valid) or 'none'})", ""

    if etype == "literal_error":
        choices = _literal_choices(field_type) or [
            c.strip(" '\"")
            for c in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")
            if c.strip()
        ]
        match = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5) if choices else []
        did = f" (did you mean {match[0]!r}?)" if match else ""
        msg = f"{_short(value)} is not a valid choice{did}; valid choices: {', '.join(choices)}"
        return 1 if match else 2, path, msg, ""

    if etype == "missing":
        return 3, path, "required key missing", ""

    if etype in ("model_type", "model_attributes_type", "dict_type") and _is_model(field_type):
        valid = _valid_keys(field_type)
        return 4, path, f"expected a mapping with keys {', '.join(valid)}", _got(value)

    msg = err.get("msg", "invalid value")
    return 4, path, msg[len("Value error, "):] if msg.startswith("Value error, ") else msg, _got(value)


def override_origin(path: str, origins: dict[str, str]) -> str:
    for key, text in origins.items():
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return f" [from --set {text}]"
    return ""


def format_validation_error(
    exc: ValidationError, model_cls: type[BaseModel], source: str, origins: Optional[dict[str, str]] = None,
    prefix: str = "", noun: str = "key", owner: str = "",
) -> str:
    """Turn a pydantic ValidationError into ``source: key.path: problem`` lines, best first.

    ``prefix``: where ``model_cls`` sits in the file (``quantize.1.options``); ``noun``/``owner`` word
    unknown keys (``unknown option for scheme int4-rtn; did you mean 'block_size'?``).
    """
    described: list[list[Any]] = []
    by_path: dict[str, int] = {}
    for err in exc.errors(include_url=False):
        rank, path, msg, got = _describe(err, model_cls, prefix, noun, owner)
        if path in by_path:  # several union branches failed for one value: one line
            entry = described[by_path[path]]
            if msg not in entry[2]:
                entry[2] = f"{entry[2]}, or {msg}"
            entry[0] = min(entry[0], rank)
            continue
        by_path[path] = len(described)
        described.append([rank, path, msg, got])
    # a required key reported missing right next to a typo that suggests it is one problem, not two
    suggested = set()
    for rank, path, msg, _ in described:
        if msg.startswith("unknown ") and "; did you mean '" in msg:
            parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
            suggested.add(parent + msg.split("'")[1])
    described = [d for d in described if not (d[2] == "required key missing" and d[1] in suggested)]
    described.sort(key=lambda item: item[0])  # stable: file order within one rank
    origins = origins or {}
    return "\n".join(
        f"{source}: {path}: {msg}{got}{override_origin(path, origins)}" for _, path, msg, got in described
    )


def parse_model(model_cls: type[BaseModel], data: dict, source: str, *, origins: Optional[dict[str, str]] = None):
    """Validate ``data`` as ``model_cls``; one ConfigError listing every problem, one per line.

    ``origins`` maps dotted key paths to the ``--set`` text that produced them, so a problem in an
    override says so instead of pointing at the file.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys (key: value), got {_kind_of(data)}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model_cls, source, origins)) from None


def check_options(model_cls: type[BaseModel], data: Any, source: str, path: str = "options", owner: str = "",
                  origins: Optional[dict[str, str]] = None):
    """Validate ``data`` as ``model_cls``; a ConfigError names ``source``, the key path under ``path`` and the fix.

    ``owner`` says whose options they are in an unknown-key message (``unknown option for scheme int4-rtn``).
    """
    if isinstance(data, model_cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{path}: " if path else ""
        raise ConfigError(f"{source}: {where}expected a mapping of option: value, got {_kind_of(data)}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model_cls, source, origins, prefix=path, noun="option",
                                                  owner=owner)) from None


# --------------------------------------------------------------------------- --set overrides

_SET_HELP = "use --set KEY.PATH=VALUE, e.g. --set finetune.epochs=3 or --set quantize.0.scheme=int4-rtn"


def _parse_override(text: str, source: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"{source}: --set {text!r}: missing '='; {_SET_HELP}")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"{source}: --set {text!r}: empty key path component; {_SET_HELP}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"{source}: --set {text!r}: value is not valid YAML ({problem}); quote it, e.g. --set '{key}=\"...\"'"
        ) from None
    return [p.strip() for p in parts], value


def apply_overrides(data: dict, overrides: Iterable[str], source: str = "--set") -> dict:
    """Apply ``KEY.PATH=VALUE`` overrides to ``data`` in place (and return it).

    VALUE is parsed as YAML (``3`` -> int, ``[a, b]`` -> list, ``null`` or empty -> None). A numeric
    component indexes a list (``quantize.0.scheme=int4-rtn``); missing mapping levels are created.
    """
    for text in overrides:
        parts, value = _parse_override(text, source)
        node: Any = data
        for depth, comp in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            parent = ".".join(parts[:depth]) or "(top level)"
            if isinstance(node, list):
                if not comp.lstrip("-").isdigit():
                    raise ConfigError(
                        f"{source}: --set {text!r}: {parent} is a list; use a number to pick an item "
                        f"(0..{len(node) - 1}), e.g. {parent}.0"
                    )
                index = int(comp)
                if not -len(node) <= index < len(node):
                    have = f"0..{len(node) - 1}" if node else "none: the list is empty"
                    raise ConfigError(
                        f"{source}: --set {text!r}: {where}: index out of range (valid indexes: {have})"
                    )
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = {}
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[comp] = value
                else:
                    if node.get(comp) is None:
                        node[comp] = {}
                    node = node[comp]
            else:
                raise ConfigError(
                    f"{source}: --set {text!r}: cannot set {where}: {parent} is {_kind_of(node)} "
                    f"({_short(node)}), not a mapping or list"
                )
    return data


# --------------------------------------------------------------------------- recipes


def resolve_recipe_path(path: Union[str, os.PathLike]) -> Path:
    """A recipe file path, or the bare name of one in ``recipes/`` (``"quickstart"``; the user's over the shipped)."""
    text = os.fspath(path)
    if not Path(text).exists() and not _looks_like_path(text) and not isinstance(path, os.PathLike):
        try:
            valid = resource_names("recipes")
        except ConfigError:
            raise ConfigError(f"{text}: file not found") from None
        found = find_resource("recipes", text)
        if found is None:
            raise ConfigError(unknown_choice("recipe", text, valid) if valid else f"{text}: file not found")
        return found.path
    return Path(text)


def parse_recipe(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> tuple[Recipe, Path, str, dict]:
    """Read a recipe and validate it against the schema; ``overrides`` (``KEY.PATH=VALUE``) apply first.

    Returns ``(recipe, file, source, origins)``. The checks that need the scheme and exporter
    registries (names, typed options, presets, devices, data files) are in :func:`edgeft.recipe.load_recipe`,
    which every command uses: this layer sits below the quantize schemes and exporters it would ask.
    """
    file = resolve_recipe_path(path)
    source = str(path) if Path(os.fspath(path)).exists() else display_path(file)
    data = _load_yaml_as(file, source)
    apply_overrides(data, overrides, source)
    origins = {}
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        origins[key] = text
    return parse_model(Recipe, data, source, origins=origins), file, source, origins


# --------------------------------------------------------------------------- devices and presets


def unknown_choice(what: str, name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    did = f" (did you mean {match[0]!r}?)" if match else ""
    return f"unknown {what} {name!r}{did}; valid choices: {', '.join(sorted(valid))}"


def device_names() -> list[str]:
    """Names of the device profiles in ``devices/`` (file stems; user and shipped), sorted."""
    return resource_names("devices")


def preset_names() -> list[str]:
    """Names of the export presets in ``export/`` (file stems; user and shipped), sorted."""
    return resource_names("export")


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(YAML_SUFFIXES)


def _load_named(kind: str, what: str, model_cls: type[BaseModel], name_or_path: Union[str, os.PathLike],
                with_source: bool = False):
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        file = Path(text)
        source = text
    else:
        found = find_resource(kind, text)
        if found is None:
            raise ConfigError(unknown_choice(what, text, resource_names(kind)))
        file = found.path
        source = display_path(file)
    obj = parse_model(model_cls, _load_yaml_as(file, source), source)
    if obj.name != file.stem:
        raise ConfigError(
            f"{source}: name: {obj.name!r} does not match the file name; set 'name: {file.stem}' "
            f"({what}s are referenced by file name)"
        )
    return (obj, source) if with_source else obj


def _load_yaml_as(path: Path, source: str) -> dict:
    """:func:`load_yaml`, but messages show ``source`` instead of ``path``."""
    try:
        return load_yaml(path)
    except ConfigError as e:
        msg = str(e)
        shown = str(path)
        if msg.startswith(shown):
            msg = source + msg[len(shown):]
        raise ConfigError(msg) from None


def load_device(name_or_path: Union[str, os.PathLike]) -> DeviceProfile:
    """A device profile by name (``devices/<name>.yaml``) or by path to a YAML file."""
    return _load_named("devices", "device", DeviceProfile, name_or_path)


def list_devices() -> list[DeviceProfile]:
    """Every profile in ``devices/``, sorted by name."""
    return [load_device(name) for name in device_names()]


def load_preset(name_or_path: Union[str, os.PathLike]) -> ExportPreset:
    """An export preset by name (``export/<name>.yaml``) or by path to a YAML file, checked against the schema.

    Its ``options`` are checked against its exporter's typed options by :func:`edgeft.recipe.load_preset`
    and by the exporter itself when it runs (:func:`edgeft.exporters.export`).
    """
    return _load_named("export", "export preset", ExportPreset, name_or_path)


def preset_source(name_or_path: Union[str, os.PathLike]) -> str:
    """How messages name a preset's file (``export/onnx-kv.yaml``)."""
    return _load_named("export", "export preset", ExportPreset, name_or_path, with_source=True)[1]


def list_presets() -> list[ExportPreset]:
    """Every preset in ``export/``, sorted by name."""
    return [load_preset(name) for name in preset_names()]
