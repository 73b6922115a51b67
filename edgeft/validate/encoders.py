"""Validate encoders and sequence classifiers (no generation, no perplexity), per artifact vs the reference.

Encoders: embedding agreement (cosine of mean-pooled, L2-normalized last hidden states). Sequence
classifiers: accuracy / macro-F1 on the labelled eval split with label agreement and logit differences.
Latency per inference at ``latency.batch`` x ``latency.seq_len`` (at the graph's own shape when its inputs are
fixed), measured on this machine or, for a profile with a ``remote`` target, on the device; compatibility and
budgets per device (:mod:`edgeft.validate.matrix`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeft.validate.common import (Context, accuracy_gates, entry, finish, measure_host, no_lm_metrics, reference_of,
                                    report_order)
from edgeft.validate.matrix import Timing, device_matrix

log = logging.getLogger(__name__)

# The latency keys a device result keeps.
KEEP = ("label", "per_inference_ms_p50", "per_inference_ms_p95", "peak_rss_mb", "threads", "batch", "seq_len",
        "device_host")


def embeddings(a, tok, texts: list[str], threads: int):
    """Mean-pooled last hidden state per text (an encoder artifact, PyTorch or ONNX)."""
    import numpy as np

    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    mask = enc["attention_mask"].astype(np.float32)
    if a.format == "tflite":  # the graph's own fixed length; mean-pooled and normalized by the runtime
        from edgeft.runtime.litert import embeddings as litert_embeddings

        return litert_embeddings(a.path, tok, texts, threads)
    if a.format == "onnx":
        import onnxruntime as ort

        from edgeft.runtime.lm import find_onnx, session_options

        sess = ort.InferenceSession(str(find_onnx(Path(a.path))), session_options(threads),
                                    providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        if "token_type_ids" in names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        hidden = sess.run(None, feeds)[0]
    else:
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(a.path)).eval()
        with torch.inference_mode():
            hidden = model(**{k: torch.as_tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def fixed_shape(a) -> tuple[int, int] | None:
    """(batch, seq) of an ONNX artifact whose ``input_ids`` shape is fixed, of an ExecuTorch classifier, or of a
    LiteRT graph (always fixed); else None."""
    if a.format == "pte":
        from edgeft.runtime.executorch import pte_paths

        meta = pte_paths(Path(a.path))[1]
        return (1, int(meta["seq_len"])) if meta.get("kind") == "classifier" else None
    if a.format == "tflite":
        from edgeft.runtime.litert import graph_seq

        return 1, graph_seq(a.path)
    if a.format != "onnx":
        return None
    from edgeft.exporters.onnx_encoder import fixed_shape as onnx_fixed_shape
    from edgeft.runtime.lm import find_onnx
    from edgeft.validate.compat import inspect_onnx

    info = next((i for i in inspect_onnx(find_onnx(Path(a.path))).get("inputs") or [] if i["name"] == "input_ids"),
                None)
    return onnx_fixed_shape(info["shape"]) if info else None


def classifier_logits(a, reference, tok, texts: list[str], max_length: int, threads: int):
    """Logits of a classifier artifact; the base model gets the reference's head size and a seeded random head."""
    from edgeft.exporters.onnx_encoder import module_logits, onnx_logits

    if a.format == "onnx":
        return onnx_logits(a.path, tok, texts, max_length=max_length, threads=threads)
    if a.format == "pte":
        from edgeft.runtime.executorch import ExecuTorchClassifier

        return ExecuTorchClassifier(Path(a.path), threads).logits(tok, texts, max_length)
    if a.format == "tflite":  # texts cut at the graph's own fixed length
        from edgeft.runtime.litert import logits

        return logits(a.path, tok, texts, threads=threads)
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgeft.artifacts import model_kind

    kw = {}
    if a.role == "base" and model_kind(a.path, default="encoder") != "classifier":
        kw["config"] = AutoConfig.from_pretrained(str(reference.path))  # chance level: the untrained head
        torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(a.path), dtype=torch.float32, **kw).eval()
    return module_logits(model, tok, texts, max_length)


def validate_encoders(artifacts, tokenizer_dir: Path, eval_records: list[dict], out_dir: Path, cfg=None,
                      recipe_name: str = "", console=None, classifier: bool = False):
    """Validate encoder (or, with ``classifier``, sequence-classifier) ``artifacts``; see
    :func:`edgeft.validate.validate`. Records are ``{"text"}`` (``{"text", "label"}`` for a classifier)."""
    from transformers import AutoTokenizer

    from edgeft.artifacts import report_fields
    from edgeft.runtime.bench import measure_encoder

    ctx = Context.of(cfg, out_dir)
    cfg = ctx.cfg
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    records = eval_records[: cfg.eval_examples]
    texts = [str(r.get("text", r.get("prompt"))) for r in records]
    reference = reference_of(artifacts)
    shapes = {a.name: fixed_shape(a) for a in artifacts}
    if classifier:
        fixed = [s for s in shapes.values() if s]
        max_length = fixed[0][1] if fixed else cfg.latency.seq_len  # every artifact sees the same truncation
        score = _classifier_scorer(reference, tok, records, texts, max_length, shapes, ctx.host_threads)
    else:
        max_length = 128
        score = _embedding_scorer(reference, tok, texts, ctx.host_threads)
    kind = "classifier" if classifier else "encoder"
    rep_artifacts = {a.name: entry(a, score(a), kind) for a in report_order(artifacts)}

    lat = cfg.latency

    def measure(a, t):
        batch, seq = shapes[a.name] or (lat.batch, lat.seq_len)
        log.info("validate: per-inference latency of %s (batch %d x seq %d) with %d threads", a.name, batch, seq, t)
        return measure_encoder(a.path, t, batch, seq, lat.warmup, max(lat.repeats, 5), fmt=a.format)

    # per-inference latency is measured on ONNX Runtime, ExecuTorch and LiteRT artifacts
    timed = [a for a in artifacts if a.format in ("onnx", "pte", "tflite") and a.role != "base"]
    counts = ctx.thread_counts(min(2, ctx.host_threads))
    latency = measure_host(timed, rep_artifacts, counts, max(counts), measure)
    ref_acc = rep_artifacts[reference.name]["accuracy"]
    if classifier:
        acc_gates, flags, failed_acc = accuracy_gates(artifacts, rep_artifacts, cfg.budgets,
                                                      lambda b: {"accuracy": b.accuracy}, ref_acc,
                                                      erased_metric="accuracy")
    else:
        acc_gates, flags, failed_acc = accuracy_gates(artifacts, rep_artifacts, cfg.budgets,
                                                      lambda b: {"embedding_cosine": b.embedding_cosine},
                                                      {"embedding_cosine": 1.0})

    def remote(dev, a):
        from edgeft.validate.remote import measure_remote_encoder

        batch, seq = shapes[a.name] or (lat.batch, lat.seq_len)
        return measure_remote_encoder(dev.remote, a.path, dev.cpu.threads, batch, seq, lat.warmup,
                                      max(lat.repeats, 5))

    rep_devices = device_matrix(artifacts, rep_artifacts, latency, ctx, failed_acc,
                                Timing(("per_inference_ms_p50",), KEEP, remote=remote, project=microcontroller))
    accuracy_protocol = ({"classification": f"argmax of the logits vs the eval labels, texts cut at {max_length} "
                                            "tokens; label agreement and logit differences vs the reference"}
                         if classifier else {"embedding": "mean-pooled last hidden state, L2-normalized"})
    report = {"schema_version": 1, "recipe": recipe_name, **report_fields(kind), "reference": reference.name,
              "passed": None,
              "protocol": {"eval_examples": len(texts), **accuracy_protocol,
                           "latency": {**lat.model_dump(), "host_cpus": ctx.host_threads}},
              "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates, "flags": flags,
              "projection": {"note": "roofline projection covers decoder LMs only; encoders are measured"}}
    return finish(report, ctx, failed_acc, console)


def _classifier_scorer(reference, tok, records, texts, max_length: int, shapes: dict, threads: int):
    """``score(artifact)``: accuracy / macro-F1 on the labelled records, label agreement and logit differences vs
    the reference."""
    from edgeft.metrics.classify import agreement, gold_ids, label_index, scores

    index = label_index(reference.path)
    gold = gold_ids(records, index)
    ref_logits = classifier_logits(reference, reference, tok, texts, max_length, threads)

    def score(a) -> dict:
        log.info("validate: scoring %s (%s %s) on %d labelled examples", a.name, a.format, a.precision, len(texts))
        logits = ref_logits if a is reference else classifier_logits(a, reference, tok, texts, max_length, threads)
        s = scores(logits.argmax(-1), gold, len(index))
        own = shapes[a.name][1] if a.format == "tflite" else max_length
        return {**no_lm_metrics(len(texts)), "accuracy": s["accuracy"], "macro_f1": s["macro_f1"],
                "max_length": own, **agreement(ref_logits, logits)}

    return score


def _embedding_scorer(reference, tok, texts, threads: int):
    """``score(artifact)``: mean and least cosine of its embeddings with the reference's."""
    ref_emb = embeddings(reference, tok, texts, threads)

    def score(a) -> dict:
        emb = ref_emb if a is reference else embeddings(a, tok, texts, threads)
        cos = (emb * ref_emb).sum(1)
        return {**no_lm_metrics(len(texts)), "embedding_cosine": float(cos.mean()),
                "embedding_cosine_min": float(cos.min())}

    return score


def microcontroller(dev, a, info: dict, c: dict) -> dict | None:
    """A microcontroller is nothing like this host: where TFLite Micro ran the graph, its latency is the graph's
    int8 ops (2 per MAC) at the profile's sustained int8 rate, not a host measurement; elsewhere None."""
    tflm = (c.get("tflite") or {}).get("tflite_micro") or {}
    macs = (info.get("tflite") or {}).get("macs")
    if not (tflm.get("ran") and macs):
        return None
    return {"label": "projected", "per_inference_ms_p50": 2 * macs / (dev.compute.int8_gops * 1e6),
            "macs": int(macs), "int8_gops": dev.compute.int8_gops}
