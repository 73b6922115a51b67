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
