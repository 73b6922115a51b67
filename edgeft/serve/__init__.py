"""Serve a verified release bundle over HTTP (``edgeft serve``); needs the ``serve`` extra.

Layout: :mod:`~edgeft.serve.bundle` (verify, pick the artifact), :mod:`~edgeft.serve.engine` (the model,
loaded once), :mod:`~edgeft.serve.schemas` (request bodies), :mod:`~edgeft.serve.app` (FastAPI routes,
admission, streaming), :mod:`~edgeft.serve.metrics` (Prometheus), :mod:`~edgeft.serve.reqlog` (the opt-in
request log), :mod:`~edgeft.serve.server` (uvicorn). See docs/serving.md.
"""
