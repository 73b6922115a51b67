"""``edgeft monitor``: compare a served bundle's request log with the reference statistics it ships.

Per feature, one test against the bundle's ``reference_stats.json`` (:mod:`edgeft.monitor.reference`):

=================  ==========================================  ==========================================
feature            reference                                   test (drift when ...)
=================  ==========================================  ==========================================
input_length       training inputs' token counts               two-sample Kolmogorov-Smirnov, p < alpha
input_tokens       training token frequencies (top 256+other)  Jensen-Shannon distance > ``js_margin``
confidence         the artifact on held-out inputs             KS on per-request mean log-prob (LMs, greedy
                                                               requests) / top class probability, p < alpha
entropy            the artifact on held-out inputs             KS on per-request mean entropy (LMs), p < alpha
output_length      the artifact's greedy answers               KS on completion tokens (LMs), p < alpha
prediction         training label distribution                 chi-square goodness of fit (classifiers)
embedding          training inputs' distance to the centroid   KS on the requests' distances, p < alpha
=================  ==========================================  ==========================================

Why these and not a drift library: evidently (the maintained one that fits) pulls in ~40 packages here
(litestar, plotly, nltk, statsmodels, a telemetry client) for what is, per feature, one scipy call; scipy is
already in every edgeft install. The tests are evidently's own defaults for these feature types (KS for
numeric, chi-square for categorical, Jensen-Shannon for large categorical samples such as token counts,
where tokens of one request are not independent and a chi-square on them would alarm on any log). The
token distance is judged against its own sampling noise at the log's size (see :func:`_js`): a log of 20
requests from the training distribution lies ~0.3 from it, one of 200 ~0.08.
``alpha`` is 0.001 per test: with up to five tests per report, a log drawn from the training distribution
raises a false alarm in well under 1% of reports.

Tokens are counted by the bundle's tokenizer from the logged input text, as the reference counted them.
Confidence drift uses greedy requests only (temperature 0), the decoding the reference was measured with.
A feature with fewer than ``min_samples`` log rows is reported as not tested.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.errors import DataError

log = logging.getLogger(__name__)

ALPHA = 0.001
JS_MARGIN = 0.1
NULL_DRAWS = 500
MIN_SAMPLES = 20


@dataclass
class LogRows:
    rows: list[dict] = field(default_factory=list)
    bad_lines: int = 0
    files: list[str] = field(default_factory=list)


def read_log(folder: Path) -> LogRows:
    """Every well-formed JSON line of the request log (rotated files included, oldest first)."""
    from edgeft.serve.reqlog import log_files

    folder = Path(folder)
    files = log_files(folder)
    if not files:
        raise DataError(f"{folder}: no requests.jsonl here; start the server with `edgeft serve BUNDLE --log {folder}`")
    out = LogRows(files=[str(f) for f in files])
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    out.bad_lines += 1
                    continue
                if isinstance(row, dict) and isinstance(row.get("input"), dict):
                    out.rows.append(row)
                else:
                    out.bad_lines += 1
    return out


def input_text(row: dict) -> str:
    inp = row.get("input") or {}
    return str(inp.get("prompt", inp.get("text", "")))


QUANTILES = (5, 25, 50, 75, 95)


def _quantiles(xs: list[float]) -> list[float] | None:
    return [float(q) for q in np.percentile(xs, QUANTILES)] if xs else None


def _ks(feature: str, ref, got, alpha: float, min_samples: int, note: str = "") -> dict:
    from scipy.stats import ks_2samp

    ref = [float(x) for x in ref if x is not None and math.isfinite(float(x))]
    got = [float(x) for x in got if x is not None and math.isfinite(float(x))]
    out = {"feature": feature, "test": "ks", "n_reference": len(ref), "n_log": len(got), "threshold": alpha,
           "reference_mean": float(np.mean(ref)) if ref else None, "log_mean": float(np.mean(got)) if got else None,
           "reference_quantiles": _quantiles(ref), "log_quantiles": _quantiles(got), "note": note}
    if len(got) < min_samples or len(ref) < 2:
        return {**out, "tested": False, "drift": False, "statistic": None, "p_value": None,
                "note": f"{len(got)} log rows, {len(ref)} reference values: too few to test"}
    res = ks_2samp(ref, got)
    return {**out, "tested": True, "statistic": float(res.statistic), "p_value": float(res.pvalue),
            "drift": bool(res.pvalue < alpha)}


def token_buckets(table: dict, ids) -> tuple[np.ndarray, np.ndarray]:
    """(reference, log) distributions over the reference's top tokens plus ``other``."""
    keys = list(table["top"])
    ref = np.asarray([table["top"][k] for k in keys] + [table["other"]], np.float64)
    index = {int(k): i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys) + 1, np.float64)
    for row in ids:
        for t in row:
            counts[index.get(int(t), len(keys))] += 1
    return ref, counts


def _js(table: dict, ids, margin: float, min_samples: int) -> dict:
    """Jensen-Shannon distance of the log's token distribution to the reference's, against its sampling noise:
    drift when it exceeds, by ``margin``, the 99.9th percentile of the distance of :data:`NULL_DRAWS` samples of
    the same number of tokens drawn from the reference itself (small logs are far from any distribution)."""
    from scipy.spatial.distance import jensenshannon

    ref, counts = token_buckets(table, ids)
    out = {"feature": "input_tokens", "test": "jensen-shannon", "n_reference": table.get("n_tokens"),
           "n_log": int(counts.sum()), "p_value": None,
           "reference_mean": float(ref[-1]), "log_mean": float(counts[-1] / counts.sum()) if counts.sum() else None,
           "note": "means: share of tokens outside the reference's most common ones"}
    if len(ids) < min_samples or counts.sum() == 0:
        return {**out, "tested": False, "drift": False, "statistic": None, "threshold": None,
                "note": f"{len(ids)} log rows: too few to test"}
    p = ref / ref.sum()
    draws = np.random.default_rng(0).multinomial(int(counts.sum()), p, size=NULL_DRAWS)
    noise = float(np.quantile([jensenshannon(p, d / d.sum(), base=2) for d in draws], 0.999))
    d = float(jensenshannon(p, counts / counts.sum(), base=2))
    return {**out, "tested": True, "statistic": d, "threshold": noise + margin, "drift": bool(d > noise + margin),
            "note": out["note"] + f"; sampling noise (99.9th percentile) {noise:.3f} + margin {margin:g}"}


def _chi2(ref: dict, got: list[str], alpha: float, min_samples: int) -> dict:
    from scipy.stats import chisquare

    labels = sorted(set(ref) | set(got))
    counts = Counter(got)
    obs = np.asarray([counts.get(k, 0) for k in labels], np.float64)
    p = np.asarray([ref.get(k, 0.0) for k in labels], np.float64) + 1e-6  # a label never seen in training
    exp = p / p.sum() * obs.sum()
    out = {"feature": "prediction", "test": "chi-square", "n_reference": None, "n_log": len(got), "threshold": alpha,
           "reference_mean": None, "log_mean": None,
           "note": "predicted labels vs the training label distribution: "
                   + ", ".join(f"{k} {counts.get(k, 0) / max(len(got), 1):.2f} (train {ref.get(k, 0):.2f})"
                               for k in labels)}
    if len(got) < min_samples:
        return {**out, "tested": False, "drift": False, "statistic": None, "p_value": None,
                "note": f"{len(got)} log rows: too few to test"}
    res = chisquare(obs, exp)
    return {**out, "tested": True, "statistic": float(res.statistic), "p_value": float(res.pvalue),
            "drift": bool(res.pvalue < alpha)}


def _tail(ref_sorted: np.ndarray, x: float) -> float:
    """How extreme ``x`` is for the reference sample: 0 at its median, 1 outside its range (two-sided)."""
    if ref_sorted.size == 0:
        return 0.0
    lo = np.searchsorted(ref_sorted, x, side="left") / ref_sorted.size
    hi = np.searchsorted(ref_sorted, x, side="right") / ref_sorted.size
    return float(1.0 - 2.0 * min(hi, 1.0 - lo, 0.5))


def drift(rows: list[dict], stats: dict, tok, artifact: str, alpha: float = ALPHA, js_margin: float = JS_MARGIN,
          min_samples: int = MIN_SAMPLES) -> tuple[list[dict], list[float]]:
    """(feature results, per-row drift score in [0, 1]) of log ``rows`` against the reference ``stats``."""
    from edgeft.monitor.reference import input_tokens

    kind = stats.get("kind", "causal-lm")
    texts = [input_text(r) for r in rows]
    ids = input_tokens(tok, texts)
    lengths = [len(x) for x in ids]
    results = [_ks("input_length", stats["input_length"], lengths, alpha, min_samples,
                   "tokens per input (no template)"),
               _js(stats["input_tokens"], ids, js_margin, min_samples)]
    ref_art = (stats.get("artifacts") or {}).get(artifact) or {}
    if kind == "causal-lm":
        greedy = [r for r in rows if not r.get("temperature")]
        conf = [(r.get("confidence") or {}) for r in greedy]
        results += [
            _ks("confidence", ref_art.get("mean_logprob", []), [c.get("mean_logprob") for c in conf], alpha,
                min_samples, "mean log-probability of the answer's tokens (greedy requests)"),
            _ks("entropy", ref_art.get("mean_entropy", []), [c.get("mean_entropy") for c in conf], alpha,
                min_samples, "mean entropy of the answer's tokens, nats (greedy requests)"),
            _ks("output_length", ref_art.get("completion_tokens", []),
                [r.get("completion_tokens") for r in greedy if r.get("finish_reason") == "stop"], alpha, min_samples,
                "answer tokens of greedy requests that ended on their own"),
        ]
    else:
        if kind == "classifier":
            results.append(_ks("confidence", ref_art.get("score", []),
                               [(r.get("confidence") or {}).get("score") for r in rows], alpha, min_samples,
                               "probability of the predicted class"))
            results.append(_chi2(stats.get("labels") or {}, [str(r.get("output")) for r in rows], alpha, min_samples))
        emb = (stats.get("embedding") or {}).get(artifact) or {}
        results.append(_ks("embedding", emb.get("distance", []), [r.get("centroid_distance") for r in rows], alpha,
                           min_samples, "cosine distance to the training centroid"))
    # per row: the most extreme of its length, its share of tokens the training inputs rarely use, its distance
    ref_len = np.sort(np.asarray(stats["input_length"], np.float64))
    top = {int(k) for k in stats["input_tokens"]["top"]}
    ref_dist = np.sort(np.asarray(((stats.get("embedding") or {}).get(artifact) or {}).get("distance", []),
                                  np.float64))
    scores = []
    for r, row_ids, n in zip(rows, ids, lengths):
        s = [_tail(ref_len, n), (sum(1 for t in row_ids if int(t) not in top) / n) if n else 0.0]
        d = r.get("centroid_distance")
        if d is not None and ref_dist.size:
            s.append(float(np.searchsorted(ref_dist, d) / ref_dist.size))
        scores.append(max(s))
    return results, scores


def uncertainty(row: dict, kind: str) -> float:
    """Per request, higher = less sure: the mean entropy of an LM's answer tokens, a classifier's entropy."""
    c = row.get("confidence") or {}
    v = c.get("mean_entropy") if kind == "causal-lm" else c.get("entropy")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -1.0


def monitor(log_dir: Path | str, bundle: Path | str, out_dir: Path | str | None = None, by: str = "confidence",
            top_k: int = 20, alpha: float = ALPHA, js_margin: float = JS_MARGIN,
            min_samples: int = MIN_SAMPLES, artifact: str | None = None) -> dict:
    """Write ``drift.json``, ``drift.html`` and ``review.jsonl`` into ``out_dir`` (default: ``log_dir/monitor``)."""
    from transformers import AutoTokenizer

    from edgeft.data.select import write_ranked
    from edgeft.errors import ConfigError
    from edgeft.fileio import atomic_write_text
    from edgeft.monitor.html import write_drift_html
    from edgeft.serve.bundle import verified_root

    if by not in ("confidence", "drift"):
        raise ConfigError(f"monitor: --by {by!r}: valid choices: confidence, drift")
    log_dir = Path(log_dir)
    out = Path(out_dir) if out_dir else log_dir / "monitor"
    root, tmp, manifest = verified_root(Path(bundle))
    try:
        f = root / "reference_stats.json"
        if not f.is_file():
            raise DataError(f"{bundle}: the bundle has no reference_stats.json (packaged by an older edgeft); "
                            "re-run `edgeft run RECIPE --from package`")
        stats = json.loads(f.read_text())
        tok = AutoTokenizer.from_pretrained(str(root / "tokenizer" if (root / "tokenizer").is_dir() else root))
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    logged = read_log(log_dir)
    served = Counter(str(r.get("artifact")) for r in logged.rows)
    if artifact is None and served:
        artifact = served.most_common(1)[0][0]
    rows = [r for r in logged.rows if str(r.get("artifact")) == artifact]
    if not rows:
        raise DataError(f"{log_dir}: no logged requests{f' for artifact {artifact}' if artifact else ''}")
    kind = stats.get("kind", "causal-lm")
    results, drift_scores = drift(rows, stats, tok, artifact, alpha, js_margin, min_samples)
    report = {"schema_version": 1, "bundle": str(bundle), "name": manifest.get("name"),
              "version": manifest.get("version"), "manifest_sha256": manifest.get("manifest_sha256"),
              "kind": kind, "artifact": artifact, "log": {"folder": str(log_dir), "files": logged.files,
                                                          "rows": len(rows), "bad_lines": logged.bad_lines,
                                                          "other_artifacts": {k: v for k, v in served.items()
                                                                              if k != artifact}},
              "defaults": {"alpha": alpha, "js_margin": js_margin, "min_samples": min_samples},
              "features": results, "drift": any(r["drift"] for r in results),
              "drifted": [r["feature"] for r in results if r["drift"]]}
    # the review file, in the recipe's data format: prompt/response for LMs, text/label for classifiers
    if kind == "causal-lm":
        review_rows = [{"prompt": input_text(r), "response": r.get("output", ""), "id": r.get("id")} for r in rows]
        key = field_name = "prompt"
    else:
        review_rows = [{"text": input_text(r), "label": r.get("output", ""), "probs": r.get("probs")} for r in rows]
        key = field_name = "text"
    scores = [uncertainty(r, kind) for r in rows] if by == "confidence" else drift_scores
    for row, d in zip(review_rows, drift_scores):
        row["drift_score"] = round(d, 4)
    best: dict[str, int] = {}  # one row per distinct input (its highest score): a repeated request is reviewed once
    for i, row in enumerate(review_rows):
        j = best.get(row[key])
        if j is None or scores[i] > scores[j]:
            best[row[key]] = i
    keep = sorted(best.values())
    review_rows, scores = [review_rows[i] for i in keep], [scores[i] for i in keep]
    out.mkdir(parents=True, exist_ok=True)
    picked = write_ranked(review_rows, scores, out / "review.jsonl", top_k,
                          "entropy" if by == "confidence" else "drift", "served", str(report["name"]) + "/" + artifact,
                          field_name, key)
    report["review"] = {"file": str(out / "review.jsonl"), "rows": len(picked), "by": by,
                        "note": "the model's answers, least confident (or most drifted) first: correct the "
                                "response/label, then add the file to the recipe (data.extra_train)"}
    atomic_write_text(out / "drift.json", json.dumps(report, indent=2) + "\n")
    write_drift_html(out / "drift.html", report)
    log.info("monitor: %d requests, drift in %s -> %s", len(rows), ", ".join(report["drifted"]) or "nothing", out)
    return report
