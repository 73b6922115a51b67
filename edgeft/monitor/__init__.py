"""Watch a served bundle: reference statistics at package time, drift reports and review files from the
request log (``edgeft monitor``). See docs/serving.md."""


def monitor(log_dir, bundle, out_dir=None, **kw) -> dict:
    """Drift report and review file from a request log (:func:`edgeft.monitor.drift.monitor`; ``edgeft monitor``)."""
    from edgeft.monitor.drift import monitor as run

    return run(log_dir, bundle, out_dir, **kw)


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "monitor")
