"""Pipeline stages for sequence classifiers (objectives whose task is ``seq-cls``, e.g. ``classify``).

The classifier task (:class:`edgeft.pipeline.tasks.ClassifierTask`) hands its stages to these functions,
giving each what it needs: records are ``{"text", "label"}``; merge and export check logits on
eval texts (``export.extra`` presets too; LiteRT full-integer ones calibrate on training texts);
quantize calibrates on *training* texts (disjoint from eval) and checks accuracy on the eval split;
with ``export.static_shapes`` every quantized artifact gets the same fixed input shapes as the fp32
export.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

from edgeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FIELDS = ("text", "label")
CALIBRATION_EXAMPLES = 256  # training texts fed to static-int8 calibration (one [CLS] text [SEP] row each)
CALIBRATION_TOKENS = 16  # their common length (SST-2 phrases: median 10 tokens, 99th percentile 44)
SAMPLE_TEXTS = 8  # eval texts used by the merge/export parity checks
EXTRA_SAMPLE_TEXTS = 64  # eval texts for the parity / label agreement of each export.extra preset


def handles(files) -> bool:
    """Whether ``data.files`` is a text/label file or a single file to split (this module reads it)."""
    return files is not None and (files.text_field is not None or files.eval is None)


def _path(rel: str, base_dir: Path) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(base_dir) / p


def _read(rel: str, base_dir: Path, cols: dict[str, str], what: str) -> list[dict]:
    from edgeft.data.readers import read_records

    p = _path(rel, base_dir)
    if not p.is_file():
        raise DataError(f"data.files.{what}: {p} not found; put the file there or point data.files.{what} at it")
    rows = read_records(p, list(cols.values()))
    return [{k: str(r[c]).strip() for k, c in cols.items()} for r in rows]


def split_rows(rows: list[dict], n_eval: int | None, eval_fraction: float | None, n_train: int | None,
               seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic split: shuffle row order with ``seed``, hold out the first n_eval, train on the rest."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    k = n_eval if n_eval is not None else max(1, round(len(rows) * eval_fraction))
    if k >= len(rows):
        raise DataError(f"data.files: holding out {k} eval rows leaves none of the {len(rows)} rows for training")
    ev = [rows[i] for i in order[:k]]
    train = [rows[i] for i in order[k:]]
    return (train[:n_train] if n_train else train), ev


def file_records(files, base_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """(train, eval, source) records from ``data.files``: text/label when text_field is set, else prompt/response."""
    if files.text_field is not None:
        cols = {"text": files.text_field, "label": files.label_field}
    else:
        cols = {"prompt": files.prompt_field, "response": files.response_field}
    rows = _read(files.train, base_dir, cols, "train")
    if files.label_names and "label" in cols:
        for r in rows:
            r["label"] = files.label_names.get(r["label"], r["label"])
    if files.eval is not None:
        ev = _read(files.eval, base_dir, cols, "eval")
        if files.label_names and "label" in cols:
            for r in ev:
                r["label"] = files.label_names.get(r["label"], r["label"])
        train = rows[:files.n_train] if files.n_train else rows
        return train, ev, {"train": files.train, "eval": files.eval}
    train, ev = split_rows(rows, files.n_eval, files.eval_fraction, files.n_train, files.seed)
    return train, ev, {"train": files.train, "split": {"rows": len(rows), "n_eval": len(ev), "n_train": len(train),
                                                        "seed": files.seed}}


def finetune_cfg(cfg, train: list[dict]):
    """``cfg`` with ``num_labels`` set from the training labels (when the recipe does not set it)."""
    from edgeft.finetune.objectives.classify import label_list

    labels = label_list(train)
    if cfg.num_labels is not None and cfg.num_labels != len(labels):
        raise ConfigError(f"finetune.num_labels is {cfg.num_labels} but the training split has {len(labels)} labels "
                          f"({', '.join(labels[:10])}); remove finetune.num_labels or fix the data")
    return cfg.model_copy(update={"num_labels": len(labels)})


def _texts(records: list[dict], n: int) -> list[str]:
    return [str(r["text"]) for r in records[:n]]


def merge(trained: Path, tmp: Path, base_model: Path | None, tolerance: float, eval_records: list[dict]) -> dict:
    """The trained classifier (a PEFT adapter on ``base_model``, or whole weights: ``base_model`` None) into
    ``tmp``, logits checked on eval texts."""
    from edgeft.merge import merge as merge_model

    return merge_model(trained, tmp, base_model=base_model, tolerance=tolerance,
                       sample_texts=_texts(eval_records, SAMPLE_TEXTS))


def export(merged: Path, tmp: Path, e, preset, main_name: str, eval_records: list[dict],
           train_records: list[dict]) -> dict:
    """The main preset of ``e`` (the recipe's ``export``) into the stage folder as ``main_name``, each
    ``export.extra`` preset into ``<preset>/`` beside it; ``preset(name)`` loads a preset.

    Extra presets get more eval texts for their parity / label-agreement check (an int8 graph is
    judged by agreement, which 8 texts measure too coarsely) and the training texts to calibrate on.
    """
    from edgeft.exporters import export as export_model

    ev = eval_records
    rep = export_model(merged, tmp, preset=preset(e.preset), name=main_name,
                       tolerance=e.tolerance, sample_texts=_texts(ev, SAMPLE_TEXTS), static_shapes=e.static_shapes)
    if e.extra:
        calib = {"calibration_texts": _texts(train_records, CALIBRATION_EXAMPLES)}
        rep["extra"] = {name: export_model(merged, tmp / name, preset=preset(name), name=name,
                                           tolerance=e.tolerance, sample_texts=_texts(ev, EXTRA_SAMPLE_TEXTS),
                                           static_shapes=e.static_shapes,
                                           **(calib if preset(name).format == "tflite" else {}))
                        for name in e.extra}
    return rep


def calibration_ids(tokenizer_dir: Path, records: list[dict], max_length: int, n: int = CALIBRATION_EXAMPLES,
                    length: int = CALIBRATION_TOKENS) -> list[list[int]]:
    """``n`` training texts as token-id rows of one common length, with the model's special tokens.

    Every row is a real single text, unpadded, so the calibration reader's all-ones attention mask
    is right. One length for all rows because ONNX Runtime's histogram calibrators (percentile,
    entropy) stack the recorded tensors of all rows into one array: texts of ``length`` tokens or
    more are cut to ``length`` (``[CLS] ... [SEP]`` kept); when fewer than ``n`` are that long, the
    length drops to what ``n`` texts reach.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = [tok(str(r["text"]), truncation=True, max_length=max_length).input_ids for r in records]
    if not rows:
        raise DataError("quantize: no training texts to calibrate on")
    lengths = sorted((len(r) for r in rows), reverse=True)
    L = min(length, max_length, lengths[min(n, len(rows)) - 1])
    cut = tok.build_inputs_with_special_tokens([])  # e.g. [CLS] [SEP]: kept around the cut text
    tail = cut[1:] if len(cut) >= 2 else []
    out = []
    for r in rows:
        if len(r) >= L:
            out.append(r if len(r) == L else r[:L - len(tail)] + tail)
        if len(out) == n:
            break
    return out


def quantize(export_dir: Path, tmp: Path, specs, static, tolerance: float, train: list[dict],
             ev: list[dict]) -> dict:
    """Each scheme of ``specs`` (the recipe's ``quantize``) on the dynamic-shape export in ``export_dir`` (accuracy
    vs its input on the eval split), then the export's ``static`` shapes (``export.static_shapes``, or None)
    applied to the result (logits parity static vs dynamic on eval texts, within ``tolerance``)."""
    from transformers import AutoTokenizer

    from edgeft import artifacts
    from edgeft.exporters import onnx_encoder
    from edgeft.quantize import SCHEMES, quantize as quantize_model

    src = export_dir / "dynamic" if static is not None else export_dir
    max_len = static.seq if static is not None else 128
    calib = None
    if any(SCHEMES.get(q.scheme, "quantize.scheme").needs_calibration for q in specs):
        calib = calibration_ids(src, train, max_len)
    tok = AutoTokenizer.from_pretrained(str(src))
    out = {}
    for q in specs:
        dest = tmp / q.name
        rep = quantize_model(src, dest, q.scheme, q.options, calibration_ids=calib, labeled=ev,
                             max_accuracy_drop=q.max_accuracy_drop, name=q.name)
        if static is not None:
            fixed = dest / "model.fixed.onnx"
            info = onnx_encoder.fix_shapes(dest / "model.onnx", fixed, static.batch, static.seq)
            scratch = tmp / f".{q.name}-dynamic"  # the dynamic result, kept for the parity check only
            scratch.mkdir()
            (dest / "model.onnx").rename(scratch / "model.onnx")
            fixed.rename(dest / "model.onnx")
            # Relative tolerance: 5% of the logit scale (ORT fuses a fixed-shape QDQ graph differently);
            # dynamic int8 computes activation scales per call over the whole tensor, pad rows included,
            # so its padded graph legitimately differs more from the unpadded one (25%).
            rel = 0.25 if SCHEMES.get(q.scheme).int8_mode == "dynamic" else 0.05
            parity = onnx_encoder.static_parity(scratch, dest, tok, _texts(ev, SAMPLE_TEXTS),
                                                tolerance,
                                                stage=f"quantize {q.name} (static shapes)", relative=rel)
            shutil.rmtree(scratch)
            rep["static_shapes"] = {**info, "parity_vs_dynamic": parity}
            rep["size_bytes"] = artifacts.refresh(dest).size_bytes  # the fixed-shape graph replaced the described one
            (dest / "quantize_report.json").write_text(json.dumps(rep, indent=2))
        out[q.name] = rep
    return out
