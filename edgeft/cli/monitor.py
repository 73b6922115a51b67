"""edgeft monitor LOG_DIR --bundle BUNDLE"""

from __future__ import annotations

import click


@click.command("monitor")
@click.argument("log_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--bundle", required=True, type=click.Path(exists=True), help="The bundle the server served.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where drift.json, drift.html and review.jsonl go. Default: LOG_DIR/monitor.")
@click.option("--by", type=click.Choice(["confidence", "drift"]), default="confidence", show_default=True,
              help="Review file order: least confident requests first, or most drifted first.")
@click.option("--top-k", type=int, default=20, show_default=True, help="Requests in the review file.")
@click.option("--alpha", type=float, default=None, help="p-value threshold per test (default 0.001).")
@click.option("--js-margin", type=float, default=None,
              help="Token-distribution distance allowed above its sampling noise (default 0.1).")
@click.option("--artifact", default=None, help="Artifact whose requests to check (default: the one served most).")
def monitor_cmd(log_dir, bundle, out_dir, by, top_k, alpha, js_margin, artifact):
    """Compare LOG_DIR (written by `edgeft serve --log`) with the training data's statistics in BUNDLE; write a
    drift report and a review file of the least confident requests. Exit 0 either way: read drift.json."""
    from edgeft.monitor.drift import ALPHA, JS_MARGIN, monitor

    rep = monitor(log_dir, bundle, out_dir, by=by, top_k=top_k, alpha=ALPHA if alpha is None else alpha,
                  js_margin=JS_MARGIN if js_margin is None else js_margin, artifact=artifact)
    verdict = f"DRIFT in {', '.join(rep['drifted'])}" if rep["drift"] else "no drift"
    click.echo(f"{rep['log']['rows']} requests to {rep['artifact']}: {verdict}")
    for f in rep["features"]:
        stat = "not tested" if not f["tested"] else (
            f"p={f['p_value']:.2g}" if f["p_value"] is not None else f"distance={f['statistic']:.3f}")
        click.echo(f"  {f['feature']:<14} {f['test']:<15} {stat:<14} {'DRIFT' if f['drift'] else ''}")
    out = rep["review"]["file"].rsplit("/", 1)[0]
    click.echo(f"report: {out}/drift.html; review file: {rep['review']['file']} ({rep['review']['rows']} rows)")
