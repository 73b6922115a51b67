"""Fine-tuning methods on the embedded EfficientNet-Lite0 and digit scans: held-out top-1, trainable parameters, time.

Usage (from the repository root; the data split, input size and optimizer settings are the recipe's)::

    flock /tmp/edgeft-heavy.lock python benchmarks/vision_methods.py recipes/efficientnet-lite0-digits.yaml \\
        --methods freeze,bitfit,gradual-unfreeze,full

Each method fine-tunes the same base on the recipe's training split (minus the validation tail that
picks the best epoch, as in the pipeline) and is scored on the recipe's held-out eval split, which
training never sees. ``freeze`` is the linear probe (``freeze.top_blocks: 0``: the frozen ImageNet
backbone's features, a new head). Prints a Markdown table and one JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--methods", default="freeze,bitfit,gradual-unfreeze,full")
    p.add_argument("--probe-lr", type=float, default=1e-2, help="learning rate of the linear probe (freeze)")
    p.add_argument("--probe-epochs", type=float, default=3.0, help="epochs of the linear probe (cheap: cached features)")
    a = p.parse_args()

    import numpy as np
    import torch

    from edgeft.data.images import batch
    from edgeft.finetune import finetune
    from edgeft.finetune.objectives.classify import label_ids
    from edgeft.models.vision import preprocessing
    from edgeft.pipeline.run import Pipeline
    from edgeft.recipe import load_recipe
    from edgeft.runtime.vision import ImageRuntime

    recipe = load_recipe(a.recipe)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeft-vision-methods-") as tmp:
        pipe = Pipeline(recipe, a.recipe, Path(tmp) / "runs")
        data_dir = pipe.run.stage_dir("data")
        data_dir.mkdir(parents=True)
        from edgeft.data.readers import write_jsonl
        from edgeft.pipeline import vision

        train, ev, _ = vision.data(recipe.data.images, pipe.base_dir, data_dir)
        write_jsonl(data_dir / "train.jsonl", train)
        write_jsonl(data_dir / "eval.jsonl", ev)
        train, ev = (vision.absolute(data_dir, pipe.records(split, vision.FIELDS)) for split in ("train", "eval"))
        n_val = min(vision.VAL_IMAGES, max(1, len(train) // 10))
        fit, val = train[:-n_val], train[-n_val:]
        for method in a.methods.split(","):
            update = {"method": method}
            if method == "freeze":
                update.update({"freeze": recipe.finetune.freeze.model_copy(update={"top_blocks": 0}),
                               "learning_rate": a.probe_lr, "epochs": a.probe_epochs})
            cfg = recipe.finetune.model_copy(update=update)
            out = Path(tmp) / method
            t0 = time.perf_counter()
            m = finetune(pipe.model().path, fit, val, out, cfg, work_dir=Path(tmp) / f"{method}.work")
            seconds = time.perf_counter() - t0
            model_dir = out / "model"
            if not model_dir.is_dir():  # lora: fold the adapter for scoring
                from edgeft.finetune.objectives.image_classify import load_adapter_model
                from edgeft.models.vision import save_image_classifier

                peft_model, labels = load_adapter_model(out / "adapter", pipe.model().path)
                model_dir = out / "merged"
                save_image_classifier(peft_model.merge_and_unload(), model_dir, labels)
            x = batch([r["image"] for r in ev], preprocessing(model_dir))
            gold = np.asarray(label_ids(ev, m["labels"], "eval"))
            top1 = float((ImageRuntime(model_dir, "pytorch", 2).logits(x).argmax(-1) == gold).mean())
            row = {"method": method, "top1": round(top1, 4), "trainable_params": m["trainable_params"],
                   "trainable_params_end": m.get("trainable_params_end", m["trainable_params"]),
                   "total_params": m["total_params"], "seconds": round(seconds, 1), "steps": m["steps"],
                   "epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "n_train": len(fit), "n_eval": len(ev)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads; recipe {a.recipe}")
    print("| method | held-out top-1 | trainable params | epochs | time (s) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        grew = (f" → {r['trainable_params_end']:,}" if r["trainable_params_end"] != r["trainable_params"] else "")
        print(f"| {r['method']} | {r['top1']:.3f} | {r['trainable_params']:,}{grew} of {r['total_params']:,} | "
              f"{r['epochs']:g} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
