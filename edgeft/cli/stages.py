"""Stage commands that need a recipe's context: finetune, validate, package."""

from __future__ import annotations

import click

from edgeft.cli.options import console, recipe_arg, runs_opt, set_opt


def _recipe_command(name: str):
    """A click command ``name`` taking RECIPE, --set and --runs (then the function's own options)."""
    def wrap(f):
        return click.command(name)(recipe_arg(set_opt(runs_opt(f))))

    return wrap


def _stage(recipe, overrides, runs_root, stages):
    from edgeft.config.loader import resolve_recipe_path
    from edgeft.recipe import load_recipe
    from edgeft.pipeline.run import Pipeline

    rec = load_recipe(recipe, list(overrides))
    con = console()
    p = Pipeline(rec, resolve_recipe_path(recipe), runs_root, con)
    res = p.execute(only=stages, on_stage=lambda s, st: con.print(f"[bold]{s:>9}[/bold]  {st}"))
    return p, res, con


class _MethodOption(click.Option):
    """``--method``: the help lists the registered methods, read when help is shown (not at import)."""

    def get_help_record(self, ctx):
        from edgeft.finetune import METHODS

        self.help = ("Fine-tuning method; sets finetune.method. One of: " + ", ".join(METHODS.names()) +
                     " (see docs/methods.md).")
        return super().get_help_record(ctx)


@_recipe_command("finetune")
@click.option("--processes", type=int, default=None, metavar="N",
              help="Train in N processes with accelerate launch (DDP; gloo on CPU); sets finetune.processes.")
@click.option("--method", cls=_MethodOption, default=None, metavar="NAME", help="Fine-tuning method.")
def finetune_cmd(recipe, overrides, runs_root, processes, method):
    """Fine-tune as RECIPE says (data + finetune stages); the result lands in runs/<name>/finetune/."""
    import json

    if processes is not None:
        overrides = (*overrides, f"finetune.processes={processes}")
    if method is not None:
        from edgeft.finetune import METHODS

        METHODS.get(method, "--method")  # unknown: ConfigError with did-you-mean and the valid names
        overrides = (*overrides, f"finetune.method={method}")
    p, res, con = _stage(recipe, overrides, runs_root, ["data", "finetune"])
    rec = p.run.record("finetune")
    m = rec["metrics"]
    con.print(json.dumps({k: m.get(k) for k in ("train_loss", "steps", "epochs", "tokens_per_second",
                                               "trainable_params", "best_eval_loss")}, indent=2))
    from edgeft.finetune import METHODS

    produces = METHODS.get(p.recipe.finetune.method).produces
    con.print(f"{produces}: {p.run.stage_dir('finetune') / produces}")


@_recipe_command("validate")
def validate_cmd(recipe, overrides, runs_root):
    """Validate RECIPE's artifacts (needs merge/export/quantize done); exit 7 when a gate fails."""
    from edgeft.validate.report import ValidationReport, print_summary

    p, res, con = _stage(recipe, overrides, runs_root, ["validate"])
    print_summary(ValidationReport.load(p.run.stage_dir("validate") / "report.json"), con)


@_recipe_command("package")
def package_cmd(recipe, overrides, runs_root):
    """Package RECIPE's validated artifacts into runs/<name>/package/<name>-<version>/ and a .tar.gz."""
    p, res, con = _stage(recipe, overrides, runs_root, ["package"])
    rec = p.run.record("package")["metrics"]
    con.print(f"bundle: {p.run.stage_dir('package') / rec['bundle']}")
