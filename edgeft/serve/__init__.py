"""Serve a verified release bundle over HTTP (``edgeft serve``); needs the ``serve`` extra.

Layout: :mod:`~edgeft.serve.bundle` (verify, pick the artifact), :mod:`~edgeft.serve.engine` (the model,
loaded once), :mod:`~edgeft.serve.schemas` (request bodies), :mod:`~edgeft.serve.app` (FastAPI routes,
admission, streaming), :mod:`~edgeft.serve.metrics` (Prometheus), :mod:`~edgeft.serve.reqlog` (the opt-in
request log), :mod:`~edgeft.serve.server` (uvicorn). See docs/serving.md.
"""


def serve(bundle_path, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Serve a verified bundle until SIGINT/SIGTERM (:func:`edgeft.serve.server.serve`; the ``edgeft serve`` command)."""
    from edgeft.serve.server import serve as run

    run(bundle_path, host=host, port=port, **kw)


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "serve")
