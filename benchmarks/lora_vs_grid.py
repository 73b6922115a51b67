"""How far a LoRA fine-tune moves the base model's weights, measured in steps of a 4-bit block grid.

Usage (from the repository root, after ``edgeft run recipes/quickstart.yaml``)::

    python benchmarks/lora_vs_grid.py runs/quickstart

For every LoRA-targeted Linear it rebuilds the base weight (merged − scale·B·A, from the run's
``merge/model.safetensors`` and ``finetune/adapter``), fits an asymmetric 4-bit grid per block of
``--block`` weights along the input dimension (min/max over 15 steps, float offset: Q4_1's grid),
and reports:

- ``base_grid_residual``: max |base − grid(base)| — about 1e-7 when the base was itself shipped on
  that grid (SmolLM2-135M-Instruct comes from a Q4_1 GGUF, so its Linear weights are exact 4-bit codes);
- |delta| / step: the fine-tune's change of each weight in units of its block's step;
- ``share_moved``: weights whose level on the base grid changes when the merged weight is rounded
  onto that grid. A tiny share means any asymmetric 4-bit fit at this block size (HQQ, or RTN with
  float offsets) lands back on the base model, and the fine-tune is erased.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder of a LoRA recipe (finetune/adapter and merge/ inside)")
    p.add_argument("--block", type=int, default=32, help="weights per block along the input dimension")
    a = p.parse_args()
    from safetensors.numpy import load_file

    adapter = a.run / "finetune" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("use_rslora"):
        scale = cfg["lora_alpha"] / cfg["r"] ** 0.5
    else:
        scale = cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    merged = load_file(str(a.run / "merge" / "model.safetensors"))
    rel, moved, total, residual, layers = [], 0, 0, 0.0, 0
    for key in sorted(lora):
        if not key.endswith("lora_A.weight"):
            continue
        name = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        w = merged[name].astype(np.float64)
        delta = scale * lora[key.replace("lora_A", "lora_B")].astype(np.float64) @ lora[key].astype(np.float64)
        n, k = w.shape
        if k % a.block:
            continue
        base = (w - delta).reshape(n, k // a.block, a.block)
        lo = base.min(-1, keepdims=True)
        step = (base.max(-1, keepdims=True) - lo) / 15
        step[step == 0] = 1
        levels = np.clip(np.round((base - lo) / step), 0, 15)
        residual = max(residual, float(np.abs(lo + step * levels - base).max()))
        rel.append((np.abs(delta.reshape(base.shape)) / step).ravel())
        merged_levels = np.clip(np.round((w.reshape(base.shape) - lo) / step), 0, 15)
        moved += int((merged_levels != levels).sum())
        total += levels.size
        layers += 1
    if not layers:
        raise SystemExit(f"{adapter}: no LoRA-targeted Linear with an input size divisible by {a.block}")
    r = np.concatenate(rel)
    print(json.dumps({"run": str(a.run), "block": a.block, "linears": layers, "base_grid_residual": residual,
                      "delta_over_step": {"median": float(np.median(r)), "p90": float(np.quantile(r, 0.9)),
                                          "p99": float(np.quantile(r, 0.99))},
                      "share_moved": moved / total}, indent=2))


if __name__ == "__main__":
    main()
