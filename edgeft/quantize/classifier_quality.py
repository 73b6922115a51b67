"""Quality of a quantized sequence classifier vs its input: accuracy on held-out labelled examples,
label agreement and logit differences (perplexity does not apply to a classifier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import DataError


def label_index(model_dir: Path) -> dict[str, int]:
    """``label2id`` of the classifier whose config.json lies in ``model_dir`` (raw label strings)."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    l2i = cfg.get("label2id") or {}
    if not l2i:
        i2l = cfg.get("id2label") or {}
        l2i = {v: int(k) for k, v in i2l.items()}
    return {str(k): int(v) for k, v in l2i.items()}


def gold_ids(records: Sequence[dict], index: dict[str, int]) -> np.ndarray:
    out = []
    for n, r in enumerate(records):
        lab = str(r["label"])
        if lab not in index:
            raise DataError(f"eval record {n + 1}: label {lab!r} is not one of the classifier's labels "
                            f"({', '.join(index)})")
        out.append(index[lab])
    return np.asarray(out, np.int64)


def agreement(ref_logits: np.ndarray, logits: np.ndarray) -> dict:
    """Label agreement and logit differences of ``logits`` vs ``ref_logits`` (same examples)."""
    if len(ref_logits) == 0:
        return {"label_agreement": None, "max_abs_logit_diff": None, "mean_abs_logit_diff": None}
    d = np.abs(ref_logits.astype(np.float64) - logits.astype(np.float64))
    return {"label_agreement": float((ref_logits.argmax(-1) == logits.argmax(-1)).mean()),
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean())}


def compare(in_dir: Path, out_dir: Path, records: Sequence[dict], threads: int = 2, max_length: int = 128) -> dict:
    """Accuracy / macro-F1 of the input and output ONNX classifiers on ``records`` and their agreement."""
    from transformers import AutoTokenizer

    from edgeft.exporters.onnx_encoder import onnx_logits
    from edgeft.finetune.objectives.classify import scores

    tok = AutoTokenizer.from_pretrained(str(in_dir))
    index = label_index(in_dir)
    gold = gold_ids(records, index)
    texts = [str(r["text"]) for r in records]
    ref = onnx_logits(in_dir, tok, texts, max_length=max_length, threads=threads)
    got = onnx_logits(out_dir, tok, texts, max_length=max_length, threads=threads)
    s_in = scores(ref.argmax(-1), gold, len(index))
    s_out = scores(got.argmax(-1), gold, len(index))
    return {"accuracy_input": s_in["accuracy"], "accuracy": s_out["accuracy"],
            "accuracy_drop": s_in["accuracy"] - s_out["accuracy"], "macro_f1_input": s_in["macro_f1"],
            "macro_f1": s_out["macro_f1"], "quality_examples": len(records), **agreement(ref, got)}
