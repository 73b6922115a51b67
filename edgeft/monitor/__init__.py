"""Watch a served bundle: reference statistics at package time, drift reports and review files from the
request log (``edgeft monitor``). See docs/serving.md."""
