"""edgeft merge ADAPTER --out DIR"""

from __future__ import annotations

import click


@click.command("merge")
@click.argument("adapter", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the merged model.")
@click.option("--base", type=click.Path(file_okay=False), help="Base model folder (default: from the adapter).")
@click.option("--tolerance", type=float, default=2e-3, show_default=True, help="Max |logit diff| allowed.")
def merge_cmd(adapter, out, base, tolerance):
    """Merge the PEFT ADAPTER into an fp32 reload of its base and check logit parity."""
    from edgeft.merge import merge

    rep = merge(adapter, out, base_model=base, tolerance=tolerance)
    click.echo(f"merged into {out}: max |logit diff| {rep['max_abs_logit_diff']:.3g} (tolerance {tolerance:g})")
