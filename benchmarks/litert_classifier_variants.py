"""LiteRT (.tflite) option sets on a classifier run's merged model: accuracy on the run's eval split.

Usage (from the repository root, after ``edgeft run recipes/sst2-minilm-classify.yaml``; needs
``pip install -e ".[litert]"``)::

    flock /tmp/edgeft-heavy.lock python benchmarks/litert_classifier_variants.py runs/sst2-minilm-classify \\
        '{"fp32-mul-sum": {"quantize": "none"}, "full": {}, "full-matmul": {"attention": "matmul"}}'

Each entry of the JSON object is a set of :class:`edgeft.exporters.litert.LiteRTOptions` overrides on top
of the ``--base`` preset (``litert-int8-full``). Every variant is exported from ``RUN/merge`` at the recipe's static
sequence length (``export.static_shapes.seq``), calibrated on the first ``calibration_examples`` rows of
``RUN/data/train.jsonl``, and scored on every row of ``RUN/data/eval.jsonl`` by the LiteRT runtime.
Prints one JSON line per variant: accuracy, label agreement with the fp32 PyTorch model on 64 training
rows (the export's own check), graph op counts of interest, file size and export seconds. With
``--latency N`` every variant is then timed in LiteRT's interpreter (its default XNNPACK delegate, ``--threads``)
on a synthetic full-length row as validate times it, the variants interleaved in a seeded random order, N runs each after one
warm-up, and one more JSON line per variant gives the p50 and minimum in ms. The Edge TPU ablation in
docs/benchmarks.md::

    python benchmarks/litert_classifier_variants.py RUN --base litert-int8-edgetpu --latency 30 \
        '{"edgetpu": {}, "matmul": {"attention": "matmul"}, "fc": {"linear": "fc"}, \
          "ln": {"layernorm": "native"}, "softmax": {"softmax": "native"}}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder of a classifier recipe (holds merge/, data/, recipe.yaml)")
    p.add_argument("variants", help="JSON object: variant name -> LiteRTOptions overrides")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base", default="litert-int8-full", help="preset the overrides apply to")
    p.add_argument("--latency", type=int, default=0, metavar="N", help="then time each graph N runs (0: skip)")
    a = p.parse_args()

    import numpy as np
    import yaml
    from transformers import AutoTokenizer

    from edgeft.config.loader import load_preset
    from edgeft.config.schema import StaticShapes
    from edgeft.exporters.litert import LiteRTOptions, export_litert
    from edgeft.runtime.litert import LiteRTModel

    recipe = yaml.safe_load((a.run / "recipe.yaml").read_text())
    seq = ((recipe.get("export") or {}).get("static_shapes") or {}).get("seq", 64)
    names = {v: int(k) for k, v in recipe["data"]["files"]["label_names"].items()}
    ev = [json.loads(line) for line in (a.run / "data" / "eval.jsonl").read_text().splitlines()]
    tr = [json.loads(line) for line in (a.run / "data" / "train.jsonl").read_text().splitlines()]
    y = np.array([names[r["label"]] for r in ev])
    merged = a.run / "merge"
    tok = AutoTokenizer.from_pretrained(str(merged))
    base = dict(load_preset(a.base).options)
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in json.loads(a.variants).items():
            opts = LiteRTOptions(**{**base, **over})
            out = Path(tmp) / name
            t0 = time.perf_counter()
            rep = export_litert(merged, out, opts, sample_texts=[r["text"] for r in tr[-64:]],
                                calibration_texts=[r["text"] for r in tr[:opts.calibration_examples]],
                                static_shapes=StaticShapes(batch=1, seq=seq))
            seconds = time.perf_counter() - t0
            logits = LiteRTModel(out, threads=a.threads).logits(tok, [r["text"] for r in ev])
            ops = rep["graph"]["ops"]
            print(json.dumps({
                "variant": name, "options": over, "accuracy": float((logits.argmax(-1) == y).mean()),
                "n_eval": len(ev), "agreement_vs_pytorch": (rep.get("vs_reference") or {}).get("label_agreement"),
                "batch_matmul": ops.get("BATCH_MATMUL", 0), "ops": rep["graph"]["op_count"],
                "tflite_mb": round((out / "model.tflite").stat().st_size / 1e6, 1),
                "export_seconds": round(seconds, 1)}), flush=True)
        if a.latency:
            for name, ms in interleaved_latency({n: Path(tmp) / n for n in json.loads(a.variants)},
                                                a.threads, a.latency).items():
                print(json.dumps({"variant": name, "threads": a.threads, "runs": a.latency,
                                  "p50_ms": round(float(np.median(ms)), 2), "min_ms": round(min(ms), 2)}), flush=True)


def interleaved_latency(folders: dict, threads: int, runs: int) -> dict[str, list[float]]:
    """ms per inference of each exported graph (``LiteRTModel.timed_inference``, as validate times it), the graphs
    taking turns in a seeded random order."""
    import random

    from edgeft.runtime.litert import LiteRTModel

    models = {name: LiteRTModel(folder, threads) for name, folder in folders.items()}
    for m in models.values():
        m.timed_inference()  # warm-up
    out: dict[str, list[float]] = {n: [] for n in models}
    rng = random.Random(0)
    for _ in range(runs):
        for name in rng.sample(list(models), len(models)):
            out[name].append(models[name].timed_inference() * 1e3)
    return out

if __name__ == "__main__":
    main()
