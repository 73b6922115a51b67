"""Every fine-tuning method on the same task and budget, measured side by side (docs/methods.md).

    python benchmarks/methods_table.py lm  [--methods lora,dora,...] [--steps 40] [--out runs/bench-methods]
    python benchmarks/methods_table.py cls [--methods lora,full,...] [--steps 60] [--out runs/bench-methods]
    python benchmarks/methods_table.py lm --qat [--qat-grid ort] [--qat-preserve] [--methods lora,full,...]
        (quantization-aware rows)

``lm``: SmolLM2-135M on the quickstart task (generated intent -> JSON data, 240 train / 32 eval
examples, batch 8, max_seq_len 128, ``--steps`` optimizer steps, SFT). ``cls``: MiniLM-L6 on
SST-2 sentiment (``../shared/data/sst2-train.tsv``: 2000 train / 500 held-out rows, batch 16,
max_seq_len 64, classify objective).

Each method runs in a fresh subprocess so peak RAM (VmHWM) is its own. Per method: trainable
parameters, size of what fine-tuning writes (adapter or full weights), training tokens/s (real,
non-pad tokens over training time), peak RAM while training (the process's high-water mark at the end
of training, before merge and export), the eval metric after training (exact match or
accuracy), and for mergeable methods the same metric after merge -> ONNX export -> int8-weight and
int4-rtn (block 32) quantization of the merged model (classifiers: on the 500 held-out rows), plus int4-torchao
(torchao's symmetric int4 grid, block 32: the grid QAT trains on, so the post-training point of the same plan).
With ``--qat`` each method trains with ``finetune.qat: {group_size: 32}`` instead (rows under
``OUT/<family>-qat/``) and its merged model is scored in float and as int4-torchao; with ``--qat-grid ort``
it trains on ORT's own grid (``finetune.qat.grid: ort``, rows under ``OUT/<family>-qat-ort/``) and is scored
as int4-rtn, the PTQ int4 column's scheme; ``--qat-preserve`` adds the general-text distillation
(``finetune.qat.preserve`` at its defaults; rows under ``OUT/<family>-qat[-ort]-preserve/``; the table has
two more columns for those on ORT's grid); ``--qat-start-step N`` trains the first N steps in float (rows under
``...-startN/``). The table then puts each method's PTQ and QAT rows side by side. Learning rates differ per method family (a
full fine-tune at an adapter's LR diverges); they are printed with the table. Results go to
``OUT/<family>/results.jsonl`` and the markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Per-method learning rates: what each family needs to move in a few dozen steps.
LR = {"full": 5e-5, "freeze": 1e-4, "gradual-unfreeze": 1e-4, "bitfit": 5e-3, "prompt-tuning": 3e-2,
      "prefix-tuning": 1e-2, "p-tuning": 1e-2, "ia3": 1e-2}
DEFAULT_LR = {"lm": 2e-3, "cls": 1e-3}
CLS_LR = {"full": 5e-5, "freeze": 2e-4, "gradual-unfreeze": 2e-4}

SYSTEM = "Parse the request into JSON."


def _dir_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin")) / 2**20


def _train_row(method: str, lr: float, m: dict, written: Path) -> dict:
    """The training columns of a row, from the finetune metrics and what it wrote."""
    return {"method": method, "lr": lr, "steps": m["steps"], "trainable_params": m["trainable_params"],
            "total_params": m["total_params"], "size_mb": _dir_mb(written),
            "tokens_per_second": m["tokens_per_second"], "train_seconds": m["train_seconds"],
            "final_loss": m["loss_history"][-1]["loss"] if m["loss_history"] else None,
            "train_peak_rss_mb": m.get("peak_rss_mb")}


QAT = {"group_size": 32}
INT4 = (("int8", "int8-weight"), ("int4", "int4-rtn"), ("int4_torchao", "int4-torchao"))
GRID = os.environ.get("EDGEFT_QAT_GRID", "torchao")  # set by --qat-grid for the child processes
PRESERVE = os.environ.get("EDGEFT_QAT_PRESERVE") == "1"  # set by --qat-preserve
START = int(os.environ.get("EDGEFT_QAT_START", "0"))  # set by --qat-start-step


def _schemes(qat: bool):
    """(column, scheme) pairs a row is quantized with: a QAT row only on the grid it trained on."""
    if not qat:
        return INT4
    return INT4[1:2] if GRID == "ort" else INT4[2:]


def _qat(qat: bool) -> dict | None:
    return {**QAT, "grid": GRID, "start_step": START, **({"preserve": {}} if PRESERVE else {})} if qat else None


def _lm_one(method: str, steps: int, out: Path, qat: bool = False) -> dict:
    import edgeft
    from edgeft.config.schema import FinetuneConfig
    from edgeft.data.intents import generate
    from edgeft.finetune import METHODS
    from edgeft.metrics.text import task_metrics

    from transformers import AutoTokenizer

    from edgeft.runtime.lm import OrtLM, TorchLM

    train, ev = generate(240, 32, seed=0)
    base = edgeft.resolve_model("smollm2-135m").path
    lr = LR.get(method, DEFAULT_LR["lm"])
    cfg = FinetuneConfig(method=method, objective="sft", max_steps=steps, learning_rate=lr, batch_size=8,
                         max_seq_len=128, eval_examples=0, early_stopping=None, threads=2, qat=_qat(qat))
    ft = out / "finetune"
    m = edgeft.finetune(base, train, ev, ft, cfg, SYSTEM, work_dir=out / "work")
    meth = METHODS.get(method)
    row = _train_row(method, lr, m, ft / meth.produces)
    tok = AutoTokenizer.from_pretrained(str(ft / meth.produces))
    if meth.merge == "refuse":
        from edgeft.finetune.registry import load_trained

        model = load_trained(ft / meth.produces, base)  # PEFT or AdapterHub, as the method saved it
        row["metric"] = task_metrics(TorchLM(model), tok, ev, SYSTEM, 48)["exact_match"]
        row["merge"] = f"refused: {meth.merge_note}"
        return row
    merged = out / "merged"
    edgeft.merge(ft / meth.produces, merged, base_model=base)
    row["metric"] = task_metrics(TorchLM(merged, 2), tok, ev, SYSTEM, 48)["exact_match"]
    from edgeft.data.templates import prompt_ids

    ids = prompt_ids(tok, SYSTEM, ev[0]["prompt"]) + tok(ev[0]["response"]).input_ids[:4]
    edgeft.export(merged, out / "onnx", sample_ids=ids)
    for name, scheme in _schemes(qat):
        edgeft.quantize(out / "onnx", out / name, scheme, {"block_size": 32})
        row[f"metric_{name}"] = task_metrics(OrtLM(out / name, 2), tok, ev, SYSTEM, 48)["exact_match"]
    return row


def _cls_one(method: str, steps: int, out: Path, qat: bool = False) -> dict:
    import edgeft
    from edgeft.config.schema import FinetuneConfig
    from edgeft.finetune import METHODS

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2-train.tsv"
    if not shared.is_file():
        raise SystemExit(f"{shared}: SST-2 TSV not found (the cls table needs ../shared/data)")
    from edgeft.data.readers import read_records

    rows = read_records(shared, ["sentence", "label"])
    recs = [{"text": r["sentence"], "label": int(r["label"])} for r in rows]
    train, ev = recs[:2000], recs[-500:]
    base = edgeft.resolve_model("minilm-l6").path
    lr = CLS_LR.get(method, LR.get(method, DEFAULT_LR["cls"]))
    cfg = FinetuneConfig(method=method, objective="classify", max_steps=steps, learning_rate=lr, batch_size=16,
                         max_seq_len=64, eval_examples=0, early_stopping=None, threads=2, qat=_qat(qat))
    ft = out / "finetune"
    m = edgeft.finetune(base, train, ev, ft, cfg, "", work_dir=out / "work")
    meth = METHODS.get(method)
    row = _train_row(method, lr, m, ft / meth.produces)
    evals = [h for h in m.get("eval_history", []) if "eval_accuracy" in h]
    row["metric"] = evals[-1]["eval_accuracy"] if evals else m.get("eval_accuracy")
    if meth.merge == "refuse":
        row["merge"] = f"refused: {meth.merge_note}"
        return row
    # merged -> ONNX classifier -> int8 / int4 weight-only; accuracy of each on the same held-out rows
    merged = out / "merged"
    texts = [r["text"] for r in ev[:8]]
    edgeft.merge(ft / meth.produces, merged, base_model=base, sample_texts=texts)
    edgeft.export(merged, out / "onnx", preset="onnx-cls", sample_texts=texts)
    for name, scheme in _schemes(qat):
        rep = edgeft.quantize(out / "onnx", out / name, scheme, {"block_size": 32}, labeled=ev, max_accuracy_drop=1.0)
        row["metric_onnx"] = rep["accuracy_input"]
        row[f"metric_{name}"] = rep["accuracy"]
    return row


def _child(family: str, method: str, steps: int, out: Path, qat: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    row = (_lm_one if family == "lm" else _cls_one)(method, steps, out, qat)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                row["peak_rss_mb"] = int(line.split()[1]) / 1024
    (out / "row.json").write_text(json.dumps(row, indent=2))


def _table(rows: list[dict], family: str) -> str:
    metric = "exact match" if family == "lm" else "accuracy"
    lines = [f"| method | LR | trainable params | written MB | tokens/s | training peak RAM MB | {metric} | "
             f"{metric} int8 | {metric} int4 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | – | – | – | – | – | failed: {r['error'][:80]} | – | – |")
            continue
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%) | "
                     f"{f(r['size_mb'], '.1f')} | {f(r['tokens_per_second'], '.0f')} | {f(r.get('train_peak_rss_mb'), '.0f')} | "
                     f"{f(r.get('metric'), '.3f')} | {f(r.get('metric_int8'), '.3f')} | "
                     f"{f(r.get('metric_int4'), '.3f') if 'metric_int4' in r else (r.get('merge') or '–')[:60]} |")
    return "\n".join(lines)


def _qat_table(ptq: dict[str, dict], qat: dict[str, dict], family: str, ort: dict[str, dict] | None = None,
               kept: dict[str, dict] | None = None) -> str:
    """PTQ vs QAT per method: the float metric of each run, int4 after rounding (ORT's grid and torchao's), and
    the QAT runs' int4 on the grid each trained on (torchao's: int4-torchao; ORT's: int4-rtn); with ``kept``
    (rows of QAT on ORT's grid with ``preserve``) two more columns."""
    metric = "EM" if family == "lm" else "accuracy"
    ort, kept = ort or {}, kept or {}
    extra = (f" {metric} fp32, QAT + preserve on ORT's grid | {metric} at int4 after QAT + preserve (int4-rtn) |"
             if kept else "")
    lines = [f"| method | {metric} fp32 | {metric} int4-rtn (PTQ) | {metric} int4-torchao (PTQ) | {metric} fp32, QAT run | "
             f"{metric} at int4 after QAT (int4-torchao) | {metric} fp32, QAT run on ORT's grid | "
             f"{metric} at int4 after QAT on ORT's grid (int4-rtn) |{extra} best QAT int4 − fp32 (pts) |",
             "|---|" + "---:|" * (8 + 2 * bool(kept))]

    def f(r, k):
        v = (r or {}).get(k)
        return "–" if v is None else f"{v:.3f}"

    for m in sorted(set(ptq) | set(qat) | set(ort) | set(kept)):
        p, q, o, k = ptq.get(m), qat.get(m), ort.get(m), kept.get(m)
        if (q or o or k or {}).get("qat_refused"):
            lines.append(f"| {m} | {f(p, 'metric')} | {f(p, 'metric_int4')} | {f(p, 'metric_int4_torchao')} | – | "
                         f"refused: {(q or o or k)['qat_refused'][:70]} | – | – |{' – | – |' if kept else ''} – |")
            continue
        best = [v for v in ((q or {}).get("metric_int4_torchao"), (o or {}).get("metric_int4"),
                            (k or {}).get("metric_int4")) if v is not None]
        gap = f"{100 * (max(best) - p['metric']):+.1f}" if p and p.get("metric") is not None and best else "–"
        more = f" {f(k, 'metric')} | {f(k, 'metric_int4')} |" if kept else ""
        lines.append(f"| {m} | {f(p, 'metric')} | {f(p, 'metric_int4')} | {f(p, 'metric_int4_torchao')} | "
                     f"{f(q, 'metric')} | {f(q, 'metric_int4_torchao')} | {f(o, 'metric')} | {f(o, 'metric_int4')} |"
                     f"{more} {gap} |")
    return "\n".join(lines)


def _qat_refusal(method: str) -> str | None:
    from edgeft.config.schema import QAT_METHODS
    from edgeft.finetune import METHODS

    if method in QAT_METHODS:
        return None
    meth = METHODS.get(method)
    if meth.merge == "refuse":
        return "not mergeable: no weights to round"
    return {"dora": "DoRA's merge renormalizes each column by a learned magnitude",
            "qlora": "the merge reloads the base in fp32, not the NF4 values it trained on"}.get(
        method, f"finetune.qat is built for {', '.join(QAT_METHODS)}")


def _rows(root: Path) -> dict[str, dict]:
    f = root / "results.jsonl"
    return {r["method"]: r for r in map(json.loads, f.read_text().splitlines())} if f.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=["lm", "cls"])
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    ap.add_argument("--qat", action="store_true", help="train each method quantization-aware (finetune.qat)")
    ap.add_argument("--qat-grid", choices=["torchao", "ort"], default="torchao",
                    help="with --qat: the grid QAT trains on (finetune.qat.grid)")
    ap.add_argument("--qat-preserve", action="store_true",
                    help="with --qat: also distill the base on general text (finetune.qat.preserve)")
    ap.add_argument("--qat-start-step", type=int, default=0,
                    help="with --qat: train in float for this many steps first (finetune.qat.start_step)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    steps = a.steps or (40 if a.family == "lm" else 60)
    if a.child:
        _child(a.family, a.child, steps, a.out, a.qat)
        return
    from edgeft.finetune import METHODS

    methods = a.methods.split(",") if a.methods else sorted(METHODS.names())
    os.environ["EDGEFT_QAT_GRID"] = a.qat_grid
    os.environ["EDGEFT_QAT_PRESERVE"] = "1" if a.qat and a.qat_preserve else "0"
    os.environ["EDGEFT_QAT_START"] = str(a.qat_start_step if a.qat else 0)
    tail = ("-preserve" if a.qat and a.qat_preserve else "") + (f"-start{a.qat_start_step}" if a.qat and
                                                                  a.qat_start_step else "")
    root = a.out / (a.family + ("-qat" if a.qat else "") + ("-ort" if a.qat and a.qat_grid == "ort" else "") + tail)
    rows = []
    for m in methods:
        d = root / m
        refused = _qat_refusal(m) if a.qat else None
        if refused:
            rows.append({"method": m, "qat_refused": refused})
            continue
        if (d / "row.json").is_file():
            row = json.loads((d / "row.json").read_text())
            if "train_peak_rss_mb" not in row and (d / "finetune" / "metrics.json").is_file():
                row["train_peak_rss_mb"] = json.loads((d / "finetune" / "metrics.json").read_text()).get("peak_rss_mb")
            rows.append(row)
            continue
        t0 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        p = subprocess.run([sys.executable, __file__, a.family, "--child", m, "--steps", str(steps), "--out", str(d)]
                           + (["--qat"] if a.qat else []), env=env, capture_output=True, text=True)
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            rows.append({"method": m, "error": err})
            print(f"{m}: FAILED after {time.perf_counter() - t0:.0f}s: {err}", file=sys.stderr)
            continue
        rows.append(json.loads((d / "row.json").read_text()))
        print(f"{m}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if a.qat:
        print(_qat_table(_rows(a.out / a.family), _rows(a.out / (a.family + "-qat")), a.family,
                         _rows(a.out / (a.family + "-qat-ort")), _rows(a.out / (a.family + "-qat-ort-preserve"))))
    else:
        print(_table([r for r in rows if "qat_refused" not in r], a.family))


if __name__ == "__main__":
    main()
