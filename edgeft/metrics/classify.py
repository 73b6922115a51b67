"""Classifier metrics: accuracy, macro-F1 and per-class F1, top-k, and a candidate's agreement with a reference
(label agreement, logit differences). Sequence and image classifiers, finetune evaluation, quantize and validate.

Written out rather than taken from scikit-learn (not a dependency): two counts per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgeft.errors import DataError


def class_ids(records: Sequence[dict], index: Mapping[str, int], unknown: str) -> list[int]:
    """The class id of each record's ``label`` (as a string) in ``index``; a label outside it raises
    :class:`DataError` with ``unknown`` formatted with ``n`` (the 1-based record), ``label`` and ``labels``
    (the known ones, comma-separated)."""
    out = []
    for n, r in enumerate(records):
        lab = str(r["label"])
        if lab not in index:
            raise DataError(unknown.format(n=n + 1, label=lab, labels=", ".join(index)))
        out.append(index[lab])
    return out


def label_index(model_dir: Path) -> dict[str, int]:
    """``label2id`` of the classifier whose config.json lies in ``model_dir`` (raw label strings)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    l2i = cfg.get("label2id") or {}
    if not l2i:
        i2l = cfg.get("id2label") or {}
        l2i = {v: int(k) for k, v in i2l.items()}
    return {str(k): int(v) for k, v in l2i.items()}


def gold_ids(records: Sequence[dict], index: dict[str, int]) -> np.ndarray:
    """The eval records' class ids in the classifier's ``index`` (:func:`label_index`)."""
    return np.asarray(class_ids(records, index, "eval record {n}: label {label!r} is not one of the classifier's "
                                                "labels ({labels})"), np.int64)


def per_class_f1(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> list[float]:
    """F1 = 2*TP / (2*TP + FP + FN) per class; a class absent from both pred and gold counts as F1 1."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    f1 = []
    for c in range(n_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return f1


def scores(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """Accuracy and macro-F1 (the mean of :func:`per_class_f1`) of predicted vs gold class ids."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    return {"accuracy": float((pred == gold).mean()) if len(gold) else float("nan"),
            "macro_f1": float(np.mean(per_class_f1(pred, gold, n_labels))), "n_examples": int(len(gold))}


def topk_scores(logits: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """Top-1, top-5 (top-k for fewer classes), macro-F1 and per-class F1 of ``logits`` vs gold class ids."""
    logits, gold = np.asarray(logits), np.asarray(gold)
    k = min(5, n_labels)
    top = np.argsort(-logits, axis=1)[:, :k]
    pred = logits.argmax(-1)
    s = scores(pred, gold, n_labels)
    f1 = per_class_f1(pred, gold, n_labels)
    return {"top1": s["accuracy"], "top5": float((top == gold[:, None]).any(1).mean()) if len(gold) else float("nan"),
            "topk": k, "macro_f1": s["macro_f1"], "per_class_f1": [round(x, 4) for x in f1]}


def agreement(ref_logits: np.ndarray, logits: np.ndarray) -> dict:
    """Label agreement and logit differences of ``logits`` vs ``ref_logits`` (same examples)."""
    if len(ref_logits) == 0:
        return {"label_agreement": None, "max_abs_logit_diff": None, "mean_abs_logit_diff": None}
    d = np.abs(ref_logits.astype(np.float64) - logits.astype(np.float64))
    return {"label_agreement": float((ref_logits.argmax(-1) == logits.argmax(-1)).mean()),
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean())}


def versus_input(ref_logits: np.ndarray, logits: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """A quantized classifier (``logits``) vs its input (``ref_logits``) on labelled examples: accuracy and
    macro-F1 of both, the accuracy drop, and :func:`agreement`."""
    s_in = scores(ref_logits.argmax(-1), gold, n_labels)
    s_out = scores(logits.argmax(-1), gold, n_labels)
    return {"accuracy_input": s_in["accuracy"], "accuracy": s_out["accuracy"],
            "accuracy_drop": s_in["accuracy"] - s_out["accuracy"], "macro_f1_input": s_in["macro_f1"],
            "macro_f1": s_out["macro_f1"], "quality_examples": int(len(gold)), **agreement(ref_logits, logits)}
