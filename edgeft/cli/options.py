"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

recipe_arg = click.argument("recipe", metavar="RECIPE")
set_opt = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                       help="Override a recipe value (repeatable), e.g. --set finetune.epochs=1")
runs_opt = click.option("--runs", "runs_root", default="runs", show_default=True, type=click.Path(),
                        help="Folder holding run directories.")
threads_opt = click.option("--threads", type=int, default=2, show_default=True, help="Runtime threads.")


def console():
    """Terminal console; when output is a pipe or a CI log, use 120 columns instead of rich's 80."""
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con = Console(width=120)
    return con
