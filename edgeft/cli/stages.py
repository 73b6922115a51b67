"""Stage commands that need a recipe's context: finetune, validate, package."""

from __future__ import annotations

import click

from edgeft.cli.options import console, recipe_arg, runs_opt, set_opt


def _stage(recipe, overrides, runs_root, stages):
    from edgeft.config.loader import load_recipe, resolve_recipe_path
    from edgeft.pipeline.run import Pipeline

    rec = load_recipe(recipe, list(overrides))
    con = console()
    p = Pipeline(rec, resolve_recipe_path(recipe), runs_root, con)
    res = p.execute(only=stages, on_stage=lambda s, st: con.print(f"[bold]{s:>9}[/bold]  {st}"))
    return p, res, con


@click.command("finetune")
@recipe_arg
@set_opt
@runs_opt
def finetune_cmd(recipe, overrides, runs_root):
    """Fine-tune as RECIPE says (data + finetune stages); the adapter lands in runs/<name>/finetune/."""
    import json

    p, res, con = _stage(recipe, overrides, runs_root, ["data", "finetune"])
    rec = p.run.record("finetune")
    m = rec["metrics"]
    con.print(json.dumps({k: m.get(k) for k in ("train_loss", "steps", "epochs", "tokens_per_second",
                                               "trainable_params", "best_eval_loss")}, indent=2))
    con.print(f"adapter: {p.run.stage_dir('finetune') / 'adapter'}")


@click.command("validate")
@recipe_arg
@set_opt
@runs_opt
def validate_cmd(recipe, overrides, runs_root):
    """Validate RECIPE's artifacts (needs merge/export/quantize done); exit 7 when a gate fails."""
    from edgeft.validate.report import print_summary

    p, res, con = _stage(recipe, overrides, runs_root, ["validate"])
    import json

    print_summary(json.loads((p.run.stage_dir("validate") / "report.json").read_text()), con)


@click.command("package")
@recipe_arg
@set_opt
@runs_opt
def package_cmd(recipe, overrides, runs_root):
    """Package RECIPE's validated artifacts into runs/<name>/package/<name>-<version>/ and a .tar.gz."""
    p, res, con = _stage(recipe, overrides, runs_root, ["package"])
    rec = p.run.record("package")["metrics"]
    con.print(f"bundle: {p.run.stage_dir('package') / rec['bundle']}")
