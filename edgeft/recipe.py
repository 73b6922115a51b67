"""Load a recipe or an export preset with every check, the typed options of schemes and exporters included.

:mod:`edgeft.config.loader` reads the YAML and checks it against the schema; it sits below the quantize
schemes and exporters, so the checks that ask their registries live here, one layer up: scheme names
and each ``quantize.N.options`` against the scheme's options model, ``export.preset`` /
``export.extra`` presets and their options against the exporter's model, devices, duplicate artifact
names and data files. Every command loads recipes through :func:`load_recipe`, so a typo fails
before anything runs. :func:`recipe_json_schema` / :func:`preset_json_schema` publish the models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from pydantic import BaseModel

from edgeft.config.loader import (YAML_SUFFIXES, check_options, device_names, display_path, override_origin,
                                  parse_recipe, preset_names, resolve_recipe_path, unknown_choice)
from edgeft.config.schema import QAT_METHODS, ExportPreset, Recipe
from edgeft.errors import ConfigError
from edgeft.exporters import EXPORTERS, load_checked_preset
from edgeft.quantize import SCHEMES

__all__ = ["check_recipe_refs", "load_preset", "load_recipe", "preset_json_schema", "preset_options_model",
           "recipe_json_schema", "validate_recipes"]


def load_recipe(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Recipe:
    """Load and validate a recipe; ``overrides`` (``KEY.PATH=VALUE``) apply before validation.

    ``path`` is a YAML file, or the bare name of one in ``recipes/`` (``"quickstart"``). Raises one
    ConfigError listing every problem (schema, schemes and options, presets, devices, data files).
    """
    recipe, file, source, origins = parse_recipe(path, overrides)
    problems = check_recipe_refs(recipe, source, file, origins)
    if problems:
        raise ConfigError("\n".join(problems))
    return recipe


def load_preset(name_or_path: Union[str, os.PathLike]) -> ExportPreset:
    """An export preset with its ``options`` checked against the options model its format's exporter registered
    (``EXPORTERS.register(format, options=...)``); a format that registered none passes them through unchecked."""
    return load_checked_preset(name_or_path)


def preset_options_model(fmt: str) -> Optional[type[BaseModel]]:
    """The options model the exporter of format ``fmt`` registered (None: none, or no such exporter)."""
    return EXPORTERS.options_of(fmt)


def _quantize_problems(recipe: Recipe, source: str, origins: dict[str, str]) -> list[str]:
    """Unknown scheme names and bad options of ``quantize``, each naming its key path."""
    problems: list[str] = []
    for i, spec in enumerate(recipe.quantize):
        if spec.scheme not in SCHEMES:
            where = f"quantize.{i}.scheme"
            unknown = unknown_choice("quantize scheme", spec.scheme, SCHEMES.names())
            problems.append(f"{source}: {where}: {unknown}{override_origin(where, origins)}")
            continue
        sch = SCHEMES.get(spec.scheme)
        try:
            check_options(sch.options_model, spec.options, source, f"quantize.{i}.options", f"scheme {spec.scheme}",
                          origins)
        except ConfigError as e:
            problems.extend(str(e).splitlines())
        if sch.needs_adapter and recipe.finetune.method not in ("lora", "qlora"):
            problems.append(f"{source}: quantize.{i}.scheme: scheme {spec.scheme} keeps the LoRA adapter unmerged, and "
                            f"finetune.method {recipe.finetune.method} trains no LoRA adapter; use lora or qlora, or "
                            "scheme int4-gptq/auto")
        qat = recipe.finetune.qat
        if qat is not None and qat.grid == "ort" and spec.scheme == "int4-rtn":
            o = spec.options or {}
            if int(o.get("block_size", 32)) != qat.group_size or not bool(o.get("symmetric", True)):
                problems.append(f"{source}: quantize.{i}.options: int4-rtn must be symmetric with block_size "
                                f"{qat.group_size} to round on the grid finetune.qat (grid ort) trained on")
        if qat is not None and qat.grid == "torchao" and spec.scheme == "int4-torchao":
            block = int((spec.options or {}).get("block_size", 32))
            if block != qat.group_size:
                problems.append(f"{source}: quantize.{i}.options.block_size: {block} differs from finetune.qat."
                                f"group_size {qat.group_size}, the grid training simulated; set both to the same size")
            sym = bool((spec.options or {}).get("symmetric", True))
            if sym != qat.symmetric:
                problems.append(f"{source}: quantize.{i}.options.symmetric: {str(sym).lower()} differs from "
                                f"finetune.qat.symmetric {str(qat.symmetric).lower()}, the grid training simulated; "
                                "set both the same")
    qat = recipe.finetune.qat
    if qat is not None:
        if recipe.finetune.method not in QAT_METHODS:
            problems.append(f"{source}: finetune.qat: method {recipe.finetune.method} cannot train on the int4 grid "
                            f"(QAT is built for {', '.join(QAT_METHODS)}); change finetune.method or remove finetune.qat")
        export = "int4-rtn" if qat.grid == "ort" else "int4-torchao"
        if recipe.quantize and not any(q.scheme == export for q in recipe.quantize):
            problems.append(f"{source}: finetune.qat: no quantize entry uses scheme {export}, the grid QAT trains "
                            f"on (grid {qat.grid}); add one (other int4 schemes round differently and lose what QAT "
                            "bought)")
    return problems


def _names(lister, where: str, problems: list[str]) -> list[str]:
    """``lister()`` (the profiles or presets there are); when they cannot be listed, none, and the problem."""
    try:
        return lister()
    except ConfigError as e:
        problems.append(f"{where}: {e}")
        return []


def check_recipe_refs(recipe: Recipe, source: str, recipe_path: Optional[Path] = None,
                      origins: Optional[dict[str, str]] = None) -> list[str]:
    """Checks a schema cannot do alone: named schemes, devices and presets exist, every quantize
    scheme's options fit its typed options model, data files exist. :func:`load_recipe` runs them.

    Returns one message per problem (empty when all is well).
    """
    problems: list[str] = _quantize_problems(recipe, source, origins or {})
    devices = _names(device_names, f"{source}: validate.devices", problems)
    if devices:
        for field, names in (("devices", recipe.validate_.devices), ("require", recipe.validate_.require or [])):
            for i, name in enumerate(names):
                if name not in devices:
                    problems.append(f"{source}: validate.{field}.{i}: {unknown_choice('device', name, devices)}")
    if recipe.validate_.require:
        for i, name in enumerate(recipe.validate_.require):
            if name not in recipe.validate_.devices:
                problems.append(
                    f"{source}: validate.require.{i}: {name!r} is not in validate.devices "
                    f"({', '.join(recipe.validate_.devices)}); add it there too"
                )
    presets = _names(preset_names, f"{source}: export.preset", problems)
    if presets:
        named = [("export.preset", recipe.export.preset)]
        named += [(f"export.extra.{i}", name) for i, name in enumerate(recipe.export.extra)]
        for where, name in named:
            if name not in presets:
                problems.append(f"{source}: {where}: {unknown_choice('export preset', name, presets)}")
                continue
            try:
                load_preset(name)  # checks the preset file, its options included
            except ConfigError as e:
                problems.append(f"{source}: {where}: preset {name!r} is invalid: {e}")
    seen: dict[str, int] = {}
    for i, spec in enumerate(recipe.quantize):
        if spec.name in seen:
            problems.append(
                f"{source}: quantize.{i}.name: duplicate artifact name {spec.name!r} "
                f"(also quantize.{seen[spec.name]}.name); each artifact needs its own folder name"
            )
        seen.setdefault(spec.name, i)
    if recipe.data.files is not None and recipe_path is not None:
        base = recipe_path.resolve().parent
        for field in ("train", "eval"):
            rel = getattr(recipe.data.files, field)
            if rel is not None and not (base / rel).is_file():
                problems.append(
                    f"{source}: data.files.{field}: file not found: {display_path(base / rel)} "
                    f"(paths are relative to the recipe file)"
                )
    general = recipe.validate_.perplexity.general
    if general is not None and general.text != "python-docs" and recipe_path is not None:
        path = Path(general.text) if Path(general.text).is_absolute() else recipe_path.resolve().parent / general.text
        if not path.is_file():
            problems.append(f"{source}: validate.perplexity.general.text: file not found: {display_path(path)} "
                            "(paths are relative to the recipe file; or use python-docs)")
    return problems


def validate_recipes(path: Union[str, os.PathLike]) -> list[tuple[Path, Optional[str]]]:
    """Validate one recipe file (a path or a recipe name), or every ``*.yaml`` in a folder.

    Returns ``[(file, None | error message)]`` instead of raising, so every file gets checked.
    Raises ConfigError only when ``path`` itself does not exist or holds no recipes.
    """
    p = Path(path) if Path(os.fspath(path)).exists() else resolve_recipe_path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in YAML_SUFFIXES and f.is_file())
        if not files:
            raise ConfigError(f"{path}: no *.yaml recipes in this folder")
    elif p.exists():
        files = [p]
    else:
        raise ConfigError(f"{path}: file not found")
    results: list[tuple[Path, Optional[str]]] = []
    for f in files:
        try:
            load_recipe(f)  # schema, schemes and their options, presets, devices, data files
        except ConfigError as e:
            results.append((f, str(e)))
            continue
        results.append((f, None))
    return results


# --------------------------------------------------------------------------- JSON Schema


def _by_key(owner: dict, key: str, models: dict[str, type[BaseModel]], defs: dict, tag: str) -> None:
    """Add one ``if key == name then options: <model's schema>`` branch per model to ``owner`` (a schema)."""
    owner.setdefault("properties", {})[key]["enum"] = sorted(models)
    branches = []
    for name, model in sorted(models.items()):
        ref = f"{tag}.{name}"
        defs[ref] = model.model_json_schema()
        branches.append({"if": {"properties": {key: {"const": name}}, "required": [key]},
                         "then": {"properties": {"options": {"$ref": f"#/$defs/{ref}"}}}})
    owner["allOf"] = branches


def recipe_json_schema() -> dict:
    """JSON Schema of a recipe, with each quantize scheme's options schema chosen by ``scheme``."""
    schema = Recipe.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    models = {name: SCHEMES.get(name).options_model for name in SCHEMES.names()}
    _by_key(defs["QuantizeSpec"], "scheme", models, defs, "scheme-options")
    return schema


def preset_json_schema() -> dict:
    """JSON Schema of an export preset, with each format's options schema chosen by ``format``.

    Formats whose exporter registered no options model keep a free-form ``options`` mapping.
    """
    schema = ExportPreset.model_json_schema()
    defs = schema.setdefault("$defs", {})
    formats = schema["properties"]["format"].get("enum", EXPORTERS.names())
    models = {f: EXPORTERS.options_of(f) for f in formats if EXPORTERS.options_of(f) is not None}
    _by_key(schema, "format", models, defs, "export-options")
    schema["properties"]["format"]["enum"] = list(formats)
    return schema
