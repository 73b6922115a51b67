"""ONNX int8 static variants on an image-classify run's fp32 export: top-1 on the run's held-out split.

Usage (from the repository root, after ``edgeft run recipes/efficientnet-lite0-digits.yaml``)::

    flock /tmp/edgeft-heavy.lock python benchmarks/vision_quantization.py runs/efficientnet-lite0-digits \\
        '{"minmax": {}, "entropy": {"calibrate_method": "entropy"}, "no-reduce-range": {"reduce_range": false}}'

Each entry is a set of ``int8-static`` option overrides on top of the recipe's own ``quantize`` entry
(the first one), calibrated like the pipeline (the first 200 training images, the model's center crop)
and scored by ONNX Runtime on every image of ``RUN/data/eval.jsonl``, next to the fp32 export. Prints
one JSON line per variant and a Markdown table (top-1, change vs fp32, label agreement, ms per image).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder of an image-classify recipe")
    p.add_argument("variants", help="JSON object: variant name -> int8-static option overrides")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import numpy as np
    import yaml

    from edgeft.data.images import batch
    from edgeft.data.readers import read_records
    from edgeft.models.vision import preprocessing
    from edgeft.pipeline.vision import CALIBRATION_IMAGES, IMAGE_OP_TYPES
    from edgeft.quantize import SCHEMES, scheme_options
    from edgeft.runtime.vision import ImageRuntime, read_meta

    run = a.run
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    base_opts = dict((recipe.get("quantize") or [{}])[0].get("options") or {})
    src = run / "export"
    pp = preprocessing(run / "merge")

    def recs(split):
        return [str(run / "data" / r["image"]) for r in read_records(run / "data" / f"{split}.jsonl", ["image"])]

    labels = read_meta(src)["labels"]
    gold = np.asarray([labels.index(str(r["label"])) for r in read_records(run / "data" / "eval.jsonl", ["label"])])
    x_eval = batch(recs("eval"), pp)
    x_cal = batch(recs("train")[:CALIBRATION_IMAGES], pp)

    def score(folder: Path) -> tuple[np.ndarray, float]:
        rt = ImageRuntime(folder, "onnx", a.threads)
        logits = rt.logits(x_eval)
        for _ in range(3):
            rt.timed_inference()
        ms = 1e3 * float(np.median([rt.timed_inference() for _ in range(30)]))
        return logits, ms

    ref, ref_ms = score(src)
    ref_acc = float((ref.argmax(-1) == gold).mean())
    rows = [{"variant": "fp32", "top1": ref_acc, "delta_pts": 0.0, "agreement": 1.0, "ms": ref_ms}]
    scheme = SCHEMES.get("int8-static")
    with tempfile.TemporaryDirectory(prefix="edgeft-vision-q-") as tmp:
        for name, over in json.loads(a.variants).items():
            opts = {"op_types_to_quantize": IMAGE_OP_TYPES, "weight_matmuls_only": False, **base_opts, **over}
            d = Path(tmp) / name
            d.mkdir()
            t0 = time.perf_counter()
            scheme.apply(src / "model.onnx", d / "model.onnx", x_cal, scheme_options("int8-static", opts))
            seconds = time.perf_counter() - t0
            shutil.copy(src / "image.json", d / "image.json")
            got, ms = score(d)
            acc = float((got.argmax(-1) == gold).mean())
            row = {"variant": name, "options": over, "top1": acc, "delta_pts": round(100 * (acc - ref_acc), 2),
                   "agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()), "ms": ms,
                   "quantize_seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\nmachine: {platform.machine()}, {a.threads} threads; {len(gold)} held-out images of {run}")
    print("| variant | top-1 | Δ (pts) | label agreement | ms / image |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['top1']:.3f} | {r['delta_pts']:+.1f} | {r['agreement']:.3f} | {r['ms']:.2f} |")


if __name__ == "__main__":
    main()
