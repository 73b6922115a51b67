"""Every ONNX quantization scheme on the fine-tuned quickstart SmolLM2-135M: size, perplexity, task, speed.

    flock /tmp/edgeft-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/quantization_table.py \
        [--export runs/quickstart/export] [--run runs/quickstart] [--out runs/bench-quant] [--only NAME ...]
    flock /tmp/edgeft-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/quantization_table.py --speed
        (re-measures decode tok/s of the finished rows; run it when nothing else uses the cores)

Fixed protocol (docs/quantization.md):
- perplexity on held-out text: the LAST 10% of ``../shared/data/tinyshakespeare.txt`` (by characters),
  windows of 256 tokens every 256, at most 4,096 tokens; fp32 ONNX as the reference;
- calibration (int8-static, int4-gptq, auto): 32 windows of 256 tokens from the start of the same
  file (disjoint from the held-out tail);
- task: exact match on ``<run>/data/eval.jsonl`` (48 intent-parsing examples, greedy, 48 new tokens);
- decode tok/s: 2 threads, prompt "set a timer for 10 minutes" in the chat template, 32 new
  tokens, 1 warm-up + 3 timed runs, median per-token time;
- goals: int8 <= +1% perplexity and exact match within 1 point; int4 <= +6% perplexity, size
  <= 0.2x the fp32 ONNX and exact match within 2 points.

Rows are appended to ``<out>/rows.jsonl`` as they finish (a re-run skips finished rows); the
markdown table is printed at the end and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

HEAD8 = {"lm_head": "int8", "embeddings": "int8"}
HEAD4 = {"lm_head": "int4", "embeddings": "int4"}
ROWS = [  # (name, scheme, options, goal class)
    ("fp32", None, {}, None),
    ("int8-weight b32", "int8-weight", {"block_size": 32}, "int8"),
    ("int8-weight b32, head+emb int8", "int8-weight", {"block_size": 32, **HEAD8}, "int8"),
    ("int8-dynamic", "int8-dynamic", {}, "int8"),
    ("int8-static minmax, down_proj fp32", "int8-static", {"calibrate_method": "minmax", "nodes_to_exclude": "DOWN"},
     "int8"),
    ("int4-rtn b32 (quickstart)", "int4-rtn", {"block_size": 32, "symmetric": True}, "int4"),
    ("int4-rtn b32, head+emb int8", "int4-rtn", {"block_size": 32, **HEAD8}, "int4"),
    ("int4-rtn b32, head+emb int4", "int4-rtn", {"block_size": 32, **HEAD4}, "int4"),
    ("int4-hqq b32, head+emb int8", "int4-hqq", {"block_size": 32, **HEAD8}, "int4"),
    ("int4-gptq b32 (head, emb fp32)", "int4-gptq", {"block_size": 32}, "int4"),
    ("int4-gptq b32, head+emb int8", "int4-gptq", {"block_size": 32, **HEAD8}, "int4"),
    ("int4-gptq b32, head+emb int4", "int4-gptq", {"block_size": 32, **HEAD4}, "int4"),
    ("int4-gptq b32 asym act_order, head+emb int8", "int4-gptq",
     {"block_size": 32, "symmetric": False, "act_order": True, **HEAD8}, "int4"),
    ("auto <=5% on calibration, <=0.2x (gptq asym act_order, b32>b16>int8, head+emb int8)", "auto",
     {"max_ppl_increase_pct": 5.0, "max_size_mb": 107.8,
      "candidates": ["int4/b32/asym", "int4/b16/asym", "int8/b32", "fp32"], "act_order": True,
      "granularity": "block", "sensitivity_windows": 4, "check_windows": 8, **HEAD8}, "int4"),
    # the same sensitivity measurements (reused from the row above) plus a b64 rung; the whole 0.2x budget spent
    ("auto fill 0.2x (gptq asym act_order, b64>b32>b16>int8, head+emb int8)", "auto",
     {"max_ppl_increase_pct": 6.0, "max_size_mb": 107.8, "fill_size": True,
      "candidates": ["int4/b64/asym", "int4/b32/asym", "int4/b16/asym", "int8/b32", "fp32"], "act_order": True,
      "granularity": "block", "sensitivity_windows": 4, "check_windows": 8, **HEAD8,
      "sensitivity_from": "runs/bench-quant/auto_le5pct_on_calibration_le0.2x_gptq_asym_act_order_b32>b16>int8_"
                          "heademb_int8/quant_plan.json"}, "int4"),
    # PyTorch-side schemes read the merged HF model (runs/quickstart/merge), not the ONNX export
    ("bnb-nf4 (transformers checkpoint)", "bnb-nf4", {}, "int4"),
    ("bnb-int8 (transformers checkpoint)", "bnb-int8", {}, "int8"),
    ("torch-dynamic-int8 (TorchScript)", "torch-dynamic-int8", {}, "int8"),
]

# --rows genai: the onnxruntime-genai builder's fp32 graph (export preset genai-fp32) quantized by
# edgeft, for the fast decoder; the plan is the one `auto fill` measured on the optimum export.
FILL_PLAN = "runs/bench-quant/auto_fill_0.2x_gptq_asym_act_order_b64>b32>b16>int8_heademb_int8/quant_plan.json"
GENAI_ROWS = [
    ("fp32", None, {}, None),
    ("int4-gptq b32 asym act_order, head+emb int8", "int4-gptq",
     {"block_size": 32, "symmetric": False, "act_order": True, **HEAD8}, "int4"),
    ("auto plan_from fill 0.2x (b64>b32>b16>int8, head+emb int8)", "auto",
     {"max_ppl_increase_pct": 6.0, "plan_from": FILL_PLAN, "act_order": True, "check_windows": 8,
      "candidates": ["int4/b64/asym", "int4/b32/asym", "int4/b16/asym", "int8/b32", "fp32"], **HEAD8}, "int4"),
]


def _windows(tok, text: str, seq: int, n_tokens: int):
    from edgeft.metrics.lm import windows

    return windows(tok(text, add_special_tokens=False).input_ids, seq, seq, n_tokens)


def _artifact_dir(out: Path, name: str) -> Path:
    for a, b in ((" ", "_"), (",", ""), ("+", ""), ("<=", "le"), ("(", ""), (")", ""), ("%", "pct"), ("/", "-")):
        name = name.replace(a, b)
    return out / name


def _decode_tps(lm, prompt_ids, new_tokens=32, warmup=1, repeats=3) -> float:
    per = []
    for i in range(warmup + repeats):
        _, steps = lm.timed_generate(prompt_ids, new_tokens)
        if i >= warmup:
            per.append(statistics.median(steps))
    return 1.0 / statistics.median(per)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=str(REPO / "runs/quickstart/export"))
    ap.add_argument("--run", default=str(REPO / "runs/quickstart"))
    ap.add_argument("--out", default=str(REPO / "runs/bench-quant"))
    ap.add_argument("--only", nargs="*", help="row names to (re)run")
    ap.add_argument("--rows", choices=["optimum", "genai"], default="optimum",
                    help="optimum: the rows above on the optimum export; genai: GENAI_ROWS on a genai-fp32 export "
                         "(pass --export runs/quickstart/export/genai-fp32 --out runs/bench-quant-genai)")
    ap.add_argument("--table", action="store_true", help="only print the table of the finished rows")
    ap.add_argument("--speed", action="store_true",
                    help="only re-measure decode tok/s of the finished rows (run it on an idle machine)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from transformers import AutoTokenizer

    from edgeft.data.readers import read_records
    from edgeft.data.templates import prompt_ids
    from edgeft.errors import BudgetError, ParityError
    from edgeft.artifacts import size_of
    from edgeft.quantize import SCHEMES, quantize
    from edgeft.runtime.lm import OrtLM, load_lm
    from edgeft.metrics.text import task_metrics

    if not SHARED.is_file():
        print(f"{SHARED} not found (the shared data folder holds tinyshakespeare.txt)", file=sys.stderr)
        return 2
    export, run, out = Path(args.export), Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(export))
    text = SHARED.read_text()
    cut = int(len(text) * 0.9)
    heldout = _windows(tok, text[cut:], 256, 4096)
    calib = _windows(tok, text[:cut], 256, 32 * 256)
    records = read_records(run / "data" / "eval.jsonl", ["prompt", "response"])
    import yaml

    system_prompt = yaml.safe_load((run / "recipe.yaml").read_text())["data"]["system_prompt"]
    prompt = prompt_ids(tok, system_prompt, "set a timer for 10 minutes")
    rows_file = out / "rows.jsonl"
    done = {}
    if rows_file.is_file():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            done[r["name"]] = r
    import onnx

    graph = onnx.load(str(export / "model.onnx"), load_external_data=False).graph
    down = [n.name for n in graph.node if n.op_type == "MatMul" and "down_proj" in n.name]
    del graph

    if args.speed:
        for name, r in done.items():
            if "error" in r:
                continue
            lm = load_lm(export if r["scheme"] == "-" else _artifact_dir(out, name), r.get("format", "onnx"), 2)
            r["decode_tok_s"] = _decode_tps(lm, prompt, repeats=5)
            del lm
            print(f"{name}: {r['decode_tok_s']:.1f} tok/s", flush=True)
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in done.values()))

    rows = GENAI_ROWS if args.rows == "genai" else ROWS
    for name, scheme, options, goal in rows:
        if args.speed or args.table:
            break
        if name in done and not (args.only and name in args.only):
            continue
        if args.only and name not in args.only:
            continue
        options = {k: (down if v == "DOWN" else v) for k, v in options.items()}
        print(f"== {name}", flush=True)
        if scheme is None:
            lm = OrtLM(export, 2)
            from edgeft.metrics.lm import perplexity

            row = {"size_bytes": size_of(export, "onnx"), "size_ratio": 1.0,
                   "perplexity": perplexity(lm, heldout), "perplexity_increase_pct": 0.0,
                   "quantize_seconds": 0.0, "top1_agreement": 1.0, "kl": 0.0}
            path = export
        else:
            path = _artifact_dir(out, name)
            sch = SCHEMES.get(scheme)
            src = run / "merge" if sch.input_format == "pytorch" else export
            try:
                rep = quantize(src, path, scheme, options, quality_ids=heldout, max_ppl_increase_pct=1e9,
                               calibration_ids=calib)
            except (BudgetError, ParityError) as e:  # no plan / the scheme's own check failed: the row says so
                row = {"name": name, "scheme": scheme, "options": options, "goal": goal, "error": str(e),
                       "command": "python benchmarks/quantization_table.py --only " + json.dumps(name)}
                with rows_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[name] = row
                print(f"{name}: {e}", flush=True)
                continue
            row = {k: rep[k] for k in ("size_bytes", "size_ratio", "perplexity", "perplexity_increase_pct",
                                       "quantize_seconds", "top1_agreement", "kl")}
            opts = rep["options"]
            if scheme == "auto":
                row["plan_counts"] = opts["plan"]["precision_counts"]
                row["plan_reached"] = opts["plan"]["reached"]
            row["format"] = sch.output_format
            if sch.input_format == "pytorch":  # its perplexity delta is vs the PyTorch fp32 model it read
                row["perplexity_input"] = rep["perplexity_input"]
            lm = load_lm(path, sch.output_format, 2)
        t0 = time.perf_counter()
        task = task_metrics(lm, tok, records, system_prompt, 48)
        row["exact_match"] = task["exact_match"]
        row["json_valid"] = task["json_valid"]
        row["task_seconds"] = time.perf_counter() - t0
        row["decode_tok_s"] = _decode_tps(lm, prompt)
        del lm
        row.update({"name": name, "scheme": scheme or "-", "options": options if scheme != "int8-static" else
                    {**options, "nodes_to_exclude": f"{len(down)} down_proj MatMuls"}, "goal": goal,
                    "command": "python benchmarks/quantization_table.py --only " + json.dumps(name)})
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        print(json.dumps({k: row[k] for k in ("size_ratio", "perplexity_increase_pct", "exact_match",
                                              "decode_tok_s", "quantize_seconds")}), flush=True)

    ref = done.get("fp32")
    lines = ["| artifact | scheme | size MB | × fp32 | perplexity | Δ ppl | exact match | Δ EM (pts) | "
             "decode tok/s | quantize s | meets goal |", "|" + "---|" * 11]
    for name, *_ in rows:
        r = done.get(name)
        if r is None:
            continue
        if "error" in r:
            what = "no plan" if r["scheme"] == "auto" else "failed"
            lines.append(f"| {name} | {r['scheme']} | {what}: {r['error'].split(';')[0][:160]} |" + " |" * 8 + " no |")
            continue
        d_em = 100 * (r["exact_match"] - ref["exact_match"]) if ref else float("nan")
        meets = "–"
        if r["goal"] == "int8":
            meets = "yes" if r["perplexity_increase_pct"] <= 1.0 and d_em >= -1.0 else "no"
        elif r["goal"] == "int4":
            meets = ("yes" if r["perplexity_increase_pct"] <= 6.0 and r["size_ratio"] <= 0.2 and d_em >= -2.0
                     else "no")
        lines.append(f"| {name} | {r['scheme']} | {r['size_bytes'] / 1e6:.1f} | {r['size_ratio']:.3f} | "
                     f"{r['perplexity']:.2f} | {r['perplexity_increase_pct']:+.2f}% | {r['exact_match']:.3f} | "
                     f"{d_em:+.1f} | {r['decode_tok_s']:.1f} | {r['quantize_seconds']:.0f} | {meets} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
