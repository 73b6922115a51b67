"""``edgeft serve``: verify a bundle, load its artifact once, and run the API on uvicorn until SIGINT/SIGTERM.

On a signal uvicorn stops accepting connections and waits for every in-flight request (streams included)
to finish, up to the request timeout plus a few seconds; then the worker threads end and the request log
is closed.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from edgeft.errors import VerifyError

log = logging.getLogger(__name__)


def build(bundle_path: Path | str, device: str | None = None, concurrency: int | None = None, queue: int | None = None,
          timeout_s: float = 60.0, log_dir: Path | str | None = None, log_max_mb: float = 10.0, log_backups: int = 5,
          max_tokens: int = 256, threads: int | None = None):
    """(app, bundle): the verified bundle with its artifact loaded, and the FastAPI app serving it."""
    from edgeft.serve.app import Settings, create_app
    from edgeft.serve.bundle import one_line, open_bundle
    from edgeft.serve.engine import load_engine
    from edgeft.serve.reqlog import RequestLog

    try:
        bundle = open_bundle(bundle_path, device, threads)
    except VerifyError as e:
        raise VerifyError(f"refusing to serve: {one_line(e)}") from None
    try:
        engine = load_engine(bundle)
        conc = concurrency or bundle.threads
        settings = Settings(concurrency=conc, queue=queue if queue is not None else 4 * conc, timeout_s=timeout_s,
                            max_tokens=max_tokens)
        rlog = RequestLog(Path(log_dir), int(log_max_mb * 2**20), log_backups) if log_dir else None
        return create_app(engine, bundle, settings, rlog), bundle
    except BaseException:
        bundle.close()
        raise


def _exit_after_shutdown(signum, frame) -> None:
    sys.exit(0)


def serve(bundle_path: Path | str, host: str = "127.0.0.1", port: int = 8000, echo=print, **kw) -> None:
    """Run the server in the foreground (see :func:`build` for the options)."""
    import uvicorn

    app, bundle = build(bundle_path, **kw)
    s = app.state.workers.settings
    try:
        echo(f"serving {bundle.model_id} ({bundle.kind}, {bundle.artifact_info.format}"
             f" {bundle.artifact_info.precision}, {bundle.threads} threads) from {bundle.source}: {bundle.why}")
        echo(f"manifest_sha256 {bundle.manifest.get('manifest_sha256')}; concurrency {s.concurrency}, queue "
             f"{s.queue}, timeout {s.timeout_s:g}s; http://{host}:{port}")
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=int(s.timeout_s) + 5, lifespan="on")
        # uvicorn re-raises the signal that stopped it once every request is finished; the handler it restores
        # first (this one) makes that a clean exit 0: a graceful shutdown is not a failure
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _exit_after_shutdown)
        uvicorn.Server(config).run()
    finally:
        bundle.close()
