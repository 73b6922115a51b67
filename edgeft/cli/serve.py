"""edgeft serve BUNDLE"""

from __future__ import annotations

import click


@click.command("serve")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--device", default=None, metavar="NAME",
              help="Serve the fastest artifact that passed on this device profile of the bundle's report. Default: "
                   "the fastest that passed on host; when the report has no host profile, the fastest that passed "
                   "on every required device (else on any required device).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests computed at once. Default: the device profile's threads.")
@click.option("--queue", type=click.IntRange(min=0), default=None, help="Requests waiting beyond those (then 429). Default: 4 x concurrency.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds per request, queue wait included (503 in the queue, 504 while computing).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads. Default: the device profile's threads.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Completion length when a request sets no max_tokens.")
@click.option("--log", "log_dir", type=click.Path(file_okay=False), default=None,
              help="Write a JSONL request log (inputs, outputs, latency, confidence) into this folder; off by default. "
                   "It holds user inputs verbatim: see docs/serving.md, Privacy.")
@click.option("--log-max-mb", type=float, default=10.0, show_default=True, help="Rotate the log at this size.")
@click.option("--log-backups", type=int, default=5, show_default=True, help="Rotated log files kept.")
def serve_cmd(bundle, device, host, port, concurrency, queue, timeout_s, threads, max_tokens, log_dir, log_max_mb,
              log_backups):
    """Serve BUNDLE (folder or .tar.gz) over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions,
    /v1/embeddings, plus /v1/classify, /v1/models, /health and /metrics. Refuses a bundle that does not verify."""
    from edgeft.serve.server import serve

    serve(bundle, host=host, port=port, echo=lambda m: click.echo(m, err=True), device=device,
          concurrency=concurrency, queue=queue, timeout_s=timeout_s, log_dir=log_dir, log_max_mb=log_max_mb,
          log_backups=log_backups, max_tokens=max_tokens, threads=threads)
