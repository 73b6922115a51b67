"""edgeft recipes list|show|validate"""

from __future__ import annotations

import click


@click.group("recipes")
def recipes_grp():
    """Recipes (recipes/*.yaml)."""


@recipes_grp.command("list")
def list_cmd():
    """Recipe names with their descriptions (and "user" for a recipe of the user's recipes/ folder).

    Each file is read against the schema only: a recipe whose data files are not on this machine is still
    listed (``edgeft recipes validate`` runs every check)."""
    from edgeft.config.loader import parse_recipe
    from edgeft.config.resources import list_resources

    for res in list_resources("recipes"):
        r = parse_recipe(res.path)[0]
        origin = "" if res.origin == "shipped" else f" [{res.describe()}]"
        click.echo(f"{res.name:<24} {r.description.strip().splitlines()[0] if r.description else ''}{origin}")


@recipes_grp.command("show")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value.")
def show_cmd(recipe, overrides):
    """Print RECIPE (a file or a name in recipes/) with every default filled in, then the file it was read from."""
    import yaml

    from edgeft.config.loader import resolve_recipe_path
    from edgeft.recipe import load_recipe
    from edgeft.config.resources import find_resource

    r = load_recipe(recipe, list(overrides))
    click.echo(yaml.safe_dump(r.model_dump(by_alias=True), sort_keys=False, width=100), nl=False)
    path = resolve_recipe_path(recipe)
    found = find_resource("recipes", recipe) if path.stem == recipe else None
    click.echo(f"# read from {found.describe() if found else recipe}")


@recipes_grp.command("validate")
@click.argument("path")
def validate_cmd(path):
    """Validate a recipe (a file or a name in recipes/) or every recipe in a folder; exit 2 if any is invalid."""
    import sys

    from edgeft.recipe import validate_recipes

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
@click.option("--report", is_flag=True, help="The validation report schema (report.json) instead of the recipe's.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def schema_cmd(preset, report, out):
    """Print the JSON Schema of a recipe (or an export preset, or a validation report), scheme and exporter options
    included.

    Editors that read JSON Schema (e.g. the YAML language server) then complete and check recipes; tools that
    read report.json can check it against --report's."""
    import json

    if preset and report:
        raise click.UsageError("--preset and --report: pick one")
    if report:
        from edgeft.validate.report import report_json_schema

        schema = report_json_schema()
    else:
        from edgeft.recipe import preset_json_schema, recipe_json_schema

        schema = preset_json_schema() if preset else recipe_json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if out:
        from edgeft.fileio import atomic_write_text

        atomic_write_text(out, text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)
