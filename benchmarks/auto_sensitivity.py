"""``auto`` on the fine-tuned quickstart SmolLM2-135M: proxy vs measured sensitivity.

    flock /tmp/edgeft-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/auto_sensitivity.py \\
        --export runs/quickstart/export --out runs/bench-auto [--modes proxy measured] [--name NAME] \\
        [--opt KEY=VALUE ...]
    python benchmarks/auto_sensitivity.py --out runs/bench-auto --table   (the finished rows and correlations)

Per mode (``sensitivity: proxy | measured``) one ``auto`` run through :func:`edgeft.quantize.quantize`,
with what ``edgeft quantize EXPORT --scheme auto --calibration CALIB --text HELDOUT --max-tokens 4096``
gives it:

- calibration: the first 2,048 tokens of the first 90% of ``../shared/data/tinyshakespeare.txt`` in 16
  windows of 128 (the CLI's ``--calibration``): GPTQ and the proxy read all 16, the measured sensitivity
  the first ``sensitivity_windows`` (4), the budget check the next ``check_windows`` (4);
- held-out: the last 10% of the same file, 16 windows of 256 tokens (4,096 tokens), never calibrated on;
- options: ``OPTIONS`` below (the README's fill-the-budget recipe), overridden by ``--opt``.

A row (``<out>/rows.jsonl``; a re-run skips finished rows) holds the scheme's seconds (capture,
codes, sensitivity, search, total), the artifact's size, the perplexity change on the check windows and
on held-out text, and the precision counts. A measured plan carries, per (group, rung), both the
measured KL increase and the proxy: their Spearman rank correlation is printed over all pairs, per rung,
and for attention and MLP blocks apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

OPTIONS = {"candidates": ["int4/b64/asym", "int4/b32/asym", "int4/b16/asym", "int8/b32", "fp32"], "act_order": True,
           "lm_head": "int8", "embeddings": "int8", "max_size_mb": 108.0, "fill_size": True,
           "max_ppl_increase_pct": 50.0}


def _ranks(values) -> "list[float]":
    """Ranks (1-based) with ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks."""
    import numpy as np

    ra, rb = np.asarray(_ranks(list(a))), np.asarray(_ranks(list(b)))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def correlations(plan: dict) -> dict:
    """Spearman of measured KL vs proxy over a measured plan's (group, quantized rung) pairs."""
    pairs = [(g, lbl, v["kl_per_rung"][lbl], v["proxy_per_rung"][lbl]) for g, v in plan["groups"].items()
             for lbl in plan["candidates"] if lbl != "fp32" and lbl in v.get("proxy_per_rung", {})]
    out = {"all": (spearman([p[2] for p in pairs], [p[3] for p in pairs]), len(pairs))}
    for lbl in plan["candidates"]:
        sub = [p for p in pairs if p[1] == lbl]
        if len(sub) > 2:
            out[lbl] = (spearman([p[2] for p in sub], [p[3] for p in sub]), len(sub))
    for kind in ("attn", "mlp"):
        sub = [p for p in pairs if (p[0].rstrip("/").split("/")[-1] == "mlp") == (kind == "mlp")]
        if len(sub) > 2:
            out[kind] = (spearman([p[2] for p in sub], [p[3] for p in sub]), len(sub))
    return out


def _windows(tok, text: str, seq: int, n_tokens: int):
    from edgeft.metrics.lm import windows

    return windows(tok(text, add_special_tokens=False).input_ids, seq, seq, n_tokens)


def _row(name: str, mode: str, rep: dict, options: dict) -> dict:
    plan = rep["options"]["plan"]
    q = plan["quality"]
    return {"name": name, "mode": mode, "options": options, "seconds": plan["seconds"],
            "quantize_seconds": rep["quantize_seconds"], "size_mb": rep["size_bytes"] / 1e6,
            "predicted_size_mb": plan["predicted_size_mb"], "precision_counts": plan["precision_counts"],
            "predicted": q["predicted"], "check_pct": q["calibration_check"]["perplexity_increase_pct"],
            "heldout_ppl": rep["perplexity"], "heldout_pct": rep["perplexity_increase_pct"], "kl": rep["kl"],
            "top1_agreement": rep["top1_agreement"]}


def _table(rows: list[dict], out: Path) -> None:
    print("| run | sensitivity | total s | capture s | codes s | sensitivity s | search s | size MB | "
          "check Δ ppl | held-out Δ ppl | precisions |")
    print("|" + "---|" * 11)
    for r in rows:
        s = r["seconds"]
        counts = ", ".join(f"{k} x{v}" for k, v in r["precision_counts"].items() if v)
        print(f"| {r['name']} | {r['mode']} | {s['total']:.0f} | {s.get('capture', 0):.0f} | {s.get('codes', 0):.0f} | "
              f"{s.get('sensitivity', 0):.0f} | {s.get('search', 0):.0f} | {r['size_mb']:.1f} | "
              f"{r['check_pct']:+.2f}% | {r['heldout_pct']:+.2f}% | {counts} |")
    for r in rows:
        plan_file = out / r["name"] / "quant_plan.json"
        if r["mode"] == "measured" and plan_file.is_file():
            corr = correlations(json.loads(plan_file.read_text()))
            print(f"{r['name']}: Spearman(measured KL, proxy) " + ", ".join(
                f"{k} {v:.3f} (n={n})" for k, (v, n) in corr.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=str(REPO / "runs/quickstart/export"))
    ap.add_argument("--out", default=str(REPO / "runs/bench-auto"))
    ap.add_argument("--modes", nargs="*", default=["proxy", "measured"], choices=["proxy", "measured"])
    ap.add_argument("--name", default="", help="row name prefix (default: the mode)")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="override an option (YAML value)")
    ap.add_argument("--table", action="store_true", help="only print the finished rows")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    if not args.table:
        import logging

        import yaml
        from transformers import AutoTokenizer

        from edgeft.quantize import quantize

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        if not SHARED.is_file():
            print(f"{SHARED} not found (the shared data folder holds tinyshakespeare.txt)", file=sys.stderr)
            return 2
        tok = AutoTokenizer.from_pretrained(args.export)
        text = SHARED.read_text()
        cut = int(len(text) * 0.9)
        calib, heldout = _windows(tok, text[:cut], 128, 2048), _windows(tok, text[cut:], 256, 4096)
        options = {**OPTIONS, **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.opt)}}
        for mode in args.modes:
            name = f"{args.name}-{mode}" if args.name else mode
            if any(r["name"] == name for r in rows):
                continue
            rep = quantize(args.export, out / name, "auto", {**options, "sensitivity": mode}, quality_ids=heldout,
                           calibration_ids=calib, max_ppl_increase_pct=1e9)
            rows.append(_row(name, mode, rep, options))
            with rows_file.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    _table(rows, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
