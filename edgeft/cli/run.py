"""edgeft run RECIPE"""

from __future__ import annotations

import click

from edgeft.cli.options import console, recipe_arg, runs_opt, set_opt
from edgeft.errors import BudgetError
from edgeft.pipeline.rundir import STAGES


def print_result(con, res) -> None:
    from rich.table import Table

    from edgeft.validate.report import print_summary

    if res.report:
        print_summary(res.report, con)
    t = Table(title="stages", show_header=True)
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for s in STAGES:
        if s in res.timings:
            t.add_row(s, f"{res.timings[s]:.1f}")
        elif s in res.skipped:
            t.add_row(s, "skipped (up to date)")
    t.add_row("total", f"{sum(res.timings.values()):.1f}")
    con.print(t)
    if res.bundle:
        con.print(f"bundle: {res.bundle}")
    if res.tarball:
        con.print(f"tarball: {res.tarball}")
    if res.bundle:
        con.print(f"check it with: edgeft verify {res.bundle}")


@click.command("run")
@recipe_arg
@set_opt
@click.option("--from", "from_stage", type=click.Choice(STAGES), help="Re-run from this stage on.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and show which stages would run.")
@runs_opt
def run_cmd(recipe, overrides, from_stage, dry_run, runs_root):
    """Run RECIPE (a YAML file or a name in recipes/) end to end.

    Stages whose inputs did not change are skipped; an interrupted run resumes where it stopped.
    Exit code is non-zero when a stage fails or a validation gate fails.
    """
    from edgeft.pipeline.run import run

    con = console()

    def on_stage(stage, status):
        con.print(f"[bold]{stage:>9}[/bold]  {status}")

    try:
        res = run(recipe, overrides, from_stage=from_stage, dry_run=dry_run, runs_root=runs_root, console=con,
                  on_stage=on_stage)
    except BudgetError as e:  # show what failed before the one-line error
        report = getattr(e, "report", None)
        if report is not None and report.is_file():
            from edgeft.validate.report import ValidationReport, print_summary

            print_summary(ValidationReport.load(report), con)
        raise
    if not dry_run:
        print_result(con, res)
