"""LiteRT (.tflite) option sets on a classifier run's merged model: accuracy on the run's eval split.

Usage (from the repository root, after ``edgeft run recipes/sst2-minilm-classify.yaml``; needs
``pip install -e ".[litert]"``)::

    flock /tmp/edgeft-heavy.lock python benchmarks/litert_classifier_variants.py runs/sst2-minilm-classify \\
        '{"fp32-mul-sum": {"quantize": "none"}, "full": {}, "full-matmul": {"attention": "matmul"}}'

Each entry of the JSON object is a set of :class:`edgeft.exporters.litert.LiteRTOptions` overrides on top
of the ``litert-int8-full`` preset. Every variant is exported from ``RUN/merge`` at the recipe's static
sequence length (``export.static_shapes.seq``), calibrated on the first ``calibration_examples`` rows of
``RUN/data/train.jsonl``, and scored on every row of ``RUN/data/eval.jsonl`` by the LiteRT runtime.
Prints one JSON line per variant: accuracy, label agreement with the fp32 PyTorch model on 64 training
rows (the export's own check), graph op counts of interest, file size and export seconds.
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
    base = dict(load_preset("litert-int8-full").options)
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


if __name__ == "__main__":
    main()
