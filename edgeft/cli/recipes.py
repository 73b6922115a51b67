"""edgeft recipes list|show|validate"""

from __future__ import annotations

import click


@click.group("recipes")
def recipes_grp():
    """Recipes (recipes/*.yaml)."""


@recipes_grp.command("list")
def list_cmd():
    """Recipe names with their descriptions."""
    from edgeft.config.loader import load_recipe, resource_dir

    for f in sorted(resource_dir("recipes").glob("*.yaml")):
        r = load_recipe(f)
        click.echo(f"{f.stem:<24} {r.description.strip().splitlines()[0] if r.description else ''}")


@recipes_grp.command("show")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value.")
def show_cmd(recipe, overrides):
    """Print RECIPE with every default filled in."""
    import yaml

    from edgeft.config.loader import load_recipe

    r = load_recipe(recipe, list(overrides))
    click.echo(yaml.safe_dump(r.model_dump(by_alias=True), sort_keys=False, width=100))


@recipes_grp.command("validate")
@click.argument("path", type=click.Path(exists=True))
def validate_cmd(path):
    """Validate one recipe file or every recipe in a folder; exit 2 if any is invalid."""
    import sys

    from edgeft.config.loader import validate_recipes

    results = validate_recipes(path)
    bad = 0
    for f, err in results:
        if err:
            bad += 1
            click.secho(f"FAIL {err}", fg="red", err=True)
        else:
            click.echo(f"ok   {f}")
    if not results:
        click.echo(f"no recipes found in {path}", err=True)
        sys.exit(2)
    if bad:
        sys.exit(2)


@recipes_grp.command("schema")
@click.option("--preset", is_flag=True, help="The export preset schema (export/*.yaml) instead of the recipe's.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def schema_cmd(preset, out):
    """Print the JSON Schema of a recipe (or an export preset), scheme and exporter options included.

    Editors that read JSON Schema (e.g. the YAML language server) then complete and check recipes."""
    import json

    from edgeft.config.options import preset_json_schema, recipe_json_schema

    text = json.dumps(preset_json_schema() if preset else recipe_json_schema(), indent=2) + "\n"
    if out:
        from edgeft.fileio import atomic_write_text

        atomic_write_text(out, text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)
