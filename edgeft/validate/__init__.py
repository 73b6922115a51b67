"""Validate stage: every artifact (and the merged reference) x every device profile.

Per artifact: task metric (exact match, JSON validity) on the eval split, perplexity on held-out
text with a fixed protocol, top-1 agreement and KL vs the merged model. Per distinct thread
count: latency measured on this machine (``measured-host``) in a fresh process with peak RSS.
Per device: compatibility (format, precision, int8 mode, ops, shapes, size, RAM) and budgets.
Writes ``report.json`` (a :class:`~edgeft.validate.report.ValidationReport`, which ``validate`` returns) and
prints a summary table; ``report.passed`` is False when any gate fails.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

__all__ = ["Artifact", "validate"]


@dataclass
class Artifact:
    """One entry to validate: what to load (``path`` with the runtime ``format``), its role and budgets."""

    name: str
    path: Path
    format: str  # the runtime key: onnx | pytorch | torchscript | gguf | pte | tflite
    role: str = "artifact"  # base | reference | artifact
    precision: str = "fp32"
    int8_mode: str | None = None
    scheme: str | None = None
    budgets: object | None = None  # edgeft.config.Budgets overriding the recipe's
    extra: dict = field(default_factory=dict)
    spec: object | None = None  # the edgeft.artifacts.Artifact it was made from (size, files), when there is one
    folder: Path | None = None  # where that description's files lie

    @classmethod
    def of(cls, spec, folder: Path, role: str = "artifact", budgets=None) -> "Artifact":
        """The entry for an artifact described by ``spec`` (an :class:`edgeft.artifacts.Artifact`) in ``folder``."""
        return cls(spec.name, spec.load_path(folder), spec.runtime, role, spec.precision, spec.int8_mode,
                   spec.producer if spec.stage == "quantize" else None, budgets, spec=spec, folder=Path(folder))

    @classmethod
    def at(cls, folder: Path, stage: str, role: str = "artifact", budgets=None) -> "Artifact":
        """The entry for the artifact ``stage`` wrote into ``folder`` (read from its ``artifact.json``)."""
        from edgeft.artifacts import Artifact as Description

        return cls.of(Description.load(folder, stage), folder, role, budgets)


def _size_bytes(a: Artifact) -> int:
    """The artifact's size as its description says, else measured (:func:`edgeft.artifacts.size_of`)."""
    from edgeft.artifacts import size_of

    return a.spec.size_bytes if a.spec is not None else size_of(a.path, a.format)


def _task_metrics(lm, tokenizer, records, system_prompt, max_new_tokens, batch_size=16) -> dict:
    from edgeft.metrics.text import greedy_task_metrics

    if not records:  # raw-text (clm) runs: no prompt/response task, perplexity is the metric
        return {"exact_match": None, "json_valid": None, "n_examples": 0, "misses_sample": []}
    return {**greedy_task_metrics(lm, tokenizer, records, system_prompt, max_new_tokens, batch_size=batch_size,
                                  misses=5), "n_examples": len(records)}


def _add_onnx_info(info: dict, a: Artifact) -> None:
    """Record what a device cares about in an ONNX or .tflite graph (ops, shapes, int8 mode, ...)."""
    if a.format == "onnx":
        from edgeft.runtime.lm import find_onnx
        from edgeft.validate import compat

        info["onnx"] = compat.inspect_onnx(find_onnx(Path(a.path)))
    elif a.format == "tflite":
        from edgeft.validate.tflite_compat import find_tflite, inspect_tflite

        info["tflite"] = inspect_tflite(find_tflite(Path(a.path)))


def _add_quant_plan(info: dict, a: Artifact) -> None:
    """Carry an ``auto`` artifact's per-layer plan summary (quant_plan.json) into the report."""
    f = Path(a.path) / "quant_plan.json"
    if f.is_file():
        plan = json.loads(f.read_text())
        info["quant_plan"] = {"precision_counts": plan.get("precision_counts"), "budget": plan.get("budget"),
                              "reached": plan.get("reached"), "file": str(f)}


def _device_entry(dev, threads: int, required: bool, results: dict, rep_artifacts: dict) -> dict:
    """A device's report entry: it passes when some shippable artifact passes every gate on it."""
    deployable = [n for n, r in results.items() if r["passed"] and rep_artifacts[n]["role"] == "artifact"]
    return {"class": dev.class_, "threads": threads, "threads_profile": dev.cpu.threads, "required": required,
            "passed": bool(deployable), "deployable": deployable, "results": results}


def _write_reports(report: dict, out_dir: Path, console):
    """Type ``report``, write report.json and report.html from it, print its summary; return the typed report."""
    from edgeft.validate.html import write_html
    from edgeft.validate.report import ValidationReport, print_summary

    typed = ValidationReport.parse(report, str(out_dir / "report.json"))
    typed.write(out_dir / "report.json")
    write_html(out_dir / "report.html", typed)
    if console is not None:
        print_summary(typed, console)
    return typed


def _embeddings(a: Artifact, tok, texts: list[str], threads: int):
    """Mean-pooled last hidden state per text (an encoder artifact, PyTorch or ONNX)."""
    import numpy as np

    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    mask = enc["attention_mask"].astype(np.float32)
    if a.format == "tflite":  # the graph's own fixed length; mean-pooled and normalized by the runtime
        from edgeft.runtime.litert import embeddings

        return embeddings(a.path, tok, texts, threads)
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


def validate(artifacts: Sequence[Artifact], tokenizer_dir: Path, eval_records: list[dict], out_dir: Path, cfg=None,
             system_prompt: str = "", heldout_text: str | None = None, recipe_name: str = "", console=None,
             general_text: str | None = None, kind: str | None = None):
    """Validate ``artifacts`` (one must have role 'reference') against ``cfg.devices``; write report.json and
    return it (a :class:`~edgeft.validate.report.ValidationReport`).

    ``general_text`` (``cfg.perplexity.general``'s text) adds a second perplexity per artifact,
    ``perplexity_general``, gated by ``budgets.perplexity_general``. ``kind`` is what the models are
    (:func:`edgeft.artifacts.model_kind`'s words; default: the reference's): encoders and classifiers are
    scored without generation.
    """
    from transformers import AutoTokenizer

    from edgeft.artifacts import model_kind
    from edgeft.config.loader import load_device
    from edgeft.config.schema import ValidateConfig
    from edgeft.data.templates import conversation_text, prompt_ids
    from edgeft.metrics import lm as quality
    from edgeft.runtime.bench import measure
    from edgeft.runtime.lm import load_lm
    from edgeft.metrics import gate
    from edgeft.validate import compat, gates

    cfg = cfg or ValidateConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = {name: load_device(name) for name in cfg.devices}
    required = set(cfg.require if cfg.require is not None else cfg.devices)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    records = eval_records[: cfg.eval_examples]
    ref = [a for a in artifacts if a.role == "reference"]
    if len(ref) != 1:
        from edgeft.errors import StageError

        raise StageError(f"validate: {len(ref)} artifacts have role 'reference' ({', '.join(a.name for a in ref)}); "
                         "pass exactly one, the merged model the others are compared with")
    reference = ref[0]
    kind = kind or model_kind(reference.path, default="causal-lm")
    if kind in ("encoder", "classifier"):
        return _validate_encoders(artifacts, tok, records, out_dir, cfg, devices, required, recipe_name, console,
                                  classifier=kind == "classifier")
    if heldout_text is None:
        heldout_text = "".join(conversation_text(tok, system_prompt, r["prompt"], r["response"]) for r in eval_records)
    ppl_cfg = cfg.perplexity
    wins = quality.windows(tok(heldout_text, add_special_tokens=False).input_ids, ppl_cfg.seq_len, ppl_cfg.stride,
                           ppl_cfg.max_tokens)
    general_wins = None
    if general_text is not None and ppl_cfg.general is not None:
        g = ppl_cfg.general
        general_wins = quality.windows(tok(general_text, add_special_tokens=False).input_ids, g.seq_len, g.stride,
                                       g.max_tokens)
    host_threads = os.cpu_count() or 1
    latency_prompt = prompt_ids(tok, system_prompt, cfg.latency.prompt)
    config_json = {}
    cfg_file = Path(reference.path) / "config.json"
    if cfg_file.is_file():
        config_json = json.loads(cfg_file.read_text())

    # ---- accuracy, once per artifact (the reference first: others are compared to its logits)
    rep_artifacts: dict[str, dict] = {}
    ref_logits = None
    agree_wins = wins[:2]
    for a in sorted(artifacts, key=lambda a: a.role != "reference"):
        log.info("validate: scoring %s (%s %s)", a.name, a.format, a.precision)
        lm = load_lm(a.path, a.format, host_threads)
        acc = _task_metrics(lm, tok, records, system_prompt, cfg.max_new_tokens)
        acc["perplexity"] = quality.perplexity(lm, wins)
        if general_wins:
            acc["perplexity_general"] = quality.perplexity(lm, general_wins)
        if a.role == "reference":
            ref_logits = [lm.logits(w) for w in agree_wins]
            acc.update({"top1_agreement": 1.0, "kl": 0.0})
        else:
            acc.update(quality.compare(ref_logits, lm, agree_wins))
        del lm
        info = {"role": a.role, "format": a.format, "precision": a.precision, "int8_mode": a.int8_mode,
                "scheme": a.scheme, "size_bytes": _size_bytes(a), "path": str(a.path), "accuracy": acc,
                "latency": None, **a.extra}
        _add_onnx_info(info, a)
        _add_quant_plan(info, a)
        rep_artifacts[a.name] = info
    order = [a.name for a in sorted(artifacts, key=lambda a: {"base": 0, "reference": 1}.get(a.role, 2))]
    rep_artifacts = {n: rep_artifacts[n] for n in order}

    # ---- latency on this machine, once per distinct effective thread count
    host_dev = load_device("host")
    host_t = min(host_dev.cpu.threads, host_threads)
    thread_counts = sorted({min(d.cpu.threads, host_threads) for d in devices.values()} | {host_t})
    latency: dict[tuple[str, int], dict] = {}
    for a in artifacts:
        if a.role == "base":
            continue  # same architecture and size as the merged model
        for t in thread_counts:
            log.info("validate: latency of %s with %d threads", a.name, t)
            m = measure(a.path, a.format, t, latency_prompt, cfg.latency.new_tokens, cfg.latency.warmup,
                        cfg.latency.repeats)
            m["label"] = "measured-host"
            latency[(a.name, t)] = m
        rep_artifacts[a.name]["latency"] = latency[(a.name, host_t)]

    # ---- projections: a roofline per artifact x device, with a per-token overhead calibrated on host
    from edgeft.validate import projection as proj

    ctx = proj.mean_decode_context(len(latency_prompt), cfg.latency.new_tokens)
    costs = {a.name: proj.model_costs(rep_artifacts[a.name].get("onnx"), config_json, rep_artifacts[a.name]["size_bytes"],
                                      a.precision) for a in artifacts if a.role != "base"}
    onnx_arts = [a for a in artifacts if a.role == "artifact" and a.format == "onnx"]
    calib = next((a for a in onnx_arts if a.precision == "fp32"), onnx_arts[0] if onnx_arts else reference)
    overhead = proj.calibrate_overhead(costs[calib.name], host_dev, latency[(calib.name, host_t)]["per_token_ms_p50"], ctx)

    def projected(name: str, dev) -> dict:
        d = proj.project_decode(costs[name], dev, ctx, overhead)
        pf = proj.project_prefill(costs[name], dev, len(latency_prompt), overhead)
        return {"label": "projected", "per_token_ms_p50": d["per_token_ms"], "decode_tok_s": d["decode_tok_s"],
                "ttft_ms_p50": pf["ttft_ms"], "bound": d["bound"], "bytes_per_token": d["bytes_per_token"],
                "flops_per_token": d["flops_per_token"], "assumptions": d["assumptions"]}

    host_projection = {}
    for a in artifacts:
        if a.role == "base" or a.format != "onnx":
            continue  # the overhead is calibrated on ONNX Runtime; eager PyTorch has its own (larger) one
        p = projected(a.name, host_dev)
        m = latency[(a.name, host_t)]
        host_projection[a.name] = {"projected": {k: p[k] for k in ("per_token_ms_p50", "decode_tok_s", "ttft_ms_p50",
                                                                    "bound")},
                                   "measured": {k: m[k] for k in ("per_token_ms_p50", "decode_tok_s", "ttft_ms_p50")},
                                   "error": proj.projection_error(
                                       {"per_token_ms": p["per_token_ms_p50"], "ttft_ms": p["ttft_ms_p50"]}, m)}
    projection_info = {"calibrated_on": calib.name, "overhead_ms": overhead, "context_len": ctx,
                       "host_threads": host_t, "host": host_projection}

    # ---- accuracy gates (per artifact vs the merged reference) and the fine-tune-erased flag
    ref_acc = rep_artifacts[reference.name]["accuracy"]
    base = next((a for a in artifacts if a.role == "base"), None)
    base_em = rep_artifacts[base.name]["accuracy"]["exact_match"] if base else None
    acc_gates: list[dict] = []
    flags: list[str] = []
    for a in artifacts:
        if a.role != "artifact":
            continue
        budgets = gates.artifact_budgets(a.budgets, cfg.budgets)
        acc = rep_artifacts[a.name]["accuracy"]
        res = []
        if records:  # no task examples (raw-text runs): perplexity is the accuracy gate
            res += gate.evaluate_goal("exact_match", a.name, acc["exact_match"], ref_acc["exact_match"],
                                       budgets.exact_match, higher_is_better=True)
        res += gate.evaluate_goal("perplexity", a.name, acc["perplexity"], ref_acc["perplexity"],
                                   budgets.perplexity, higher_is_better=False)
        if general_wins:
            res += gate.evaluate_goal("perplexity_general", a.name, acc["perplexity_general"],
                                       ref_acc["perplexity_general"], budgets.perplexity_general,
                                       higher_is_better=False)
        acc_gates += [g.to_dict() for g in res]
        if base_em is not None:
            msg = gates.erased_flag(a.name, acc["exact_match"], base_em, ref_acc["exact_match"], budgets.erased_margin)
            if msg:
                flags.append(msg)
                acc_gates.append(gate.GateResult("fine-tune-erased", a.name, acc["exact_match"], base_em, False,
                                                  msg).to_dict())
    failed_acc = {g["artifact"] for g in acc_gates if not g["passed"]}

    # ---- devices: compatibility + budgets
    rep_devices: dict[str, dict] = {}
    for dname, dev in devices.items():
        t = min(dev.cpu.threads, host_threads)
        results = {}
        for a in artifacts:
            if a.role == "base":
                continue
            info = rep_artifacts[a.name]
            art = {"name": a.name, "format": a.format, "precision": a.precision, "int8_mode": a.int8_mode,
                   "size_bytes": info["size_bytes"], "onnx": info.get("onnx"), "tflite": info.get("tflite"),
                   "est_ram_mb": compat.estimate_ram_mb(info["size_bytes"], config_json, cfg.context_len)}
            c = compat.check(art, dev)
            host_lat = latency[(a.name, t)]
            proj_lat = projected(a.name, dev)
            device_lat = None
            if dev.remote is not None and c["compatible"] and a.format == "onnx":
                from edgeft.validate.remote import measure_remote

                log.info("validate: latency of %s on %s over SSH", a.name, dev.remote.ssh)
                device_lat = measure_remote(dev.remote, a.path, latency_prompt, cfg.latency.new_tokens,
                                            dev.cpu.threads, cfg.latency.warmup, cfg.latency.repeats)
            # Speed is gated on the most faithful figure there is: the device itself, else (for a
            # profile that is not this machine) the projection, else this machine's measurement.
            speed = device_lat or (proj_lat if dev.class_ != "host" else dict(host_lat, label="measured-host"))
            g = []
            if c["compatible"]:
                g += [x.to_dict() for x in gates.latency_gates(
                    dev, a.name, {"label": speed["label"], "ttft_ms_p50": speed["ttft_ms_p50"],
                                  "decode_tok_s": speed["decode_tok_s"]})]
                g += [x.to_dict() for x in gates.latency_gates(
                    dev, a.name, {"label": "measured-host", "peak_rss_mb": host_lat["peak_rss_mb"],
                                  "size_mb": info["size_bytes"] / 2**20})]
            passed = c["compatible"] and all(x["passed"] for x in g) and a.name not in failed_acc
            keep = ("label", "ttft_ms_p50", "ttft_ms_p95", "per_token_ms_p50", "decode_tok_s", "peak_rss_mb", "threads",
                    "bound", "device_host")
            results[a.name] = {**c, "est_ram_mb": art["est_ram_mb"], "gates": g, "passed": passed,
                               "gated_on": speed["label"],
                               "latency": {"measured-host": {k: host_lat.get(k) for k in keep if k in host_lat},
                                           "projected": {k: proj_lat.get(k) for k in keep if k in proj_lat},
                                           "measured-device": ({k: device_lat.get(k) for k in keep if k in device_lat}
                                                               if device_lat else None)}}
        rep_devices[dname] = _device_entry(dev, t, dname in required, results, rep_artifacts)
    passed = not failed_acc and all(d["passed"] for d in rep_devices.values() if d["required"])
    report = {"schema_version": 1, "recipe": recipe_name, "reference": reference.name, "passed": passed,
              "protocol": {"eval_examples": len(records), "max_new_tokens": cfg.max_new_tokens,
                           "perplexity": {**ppl_cfg.model_dump(exclude={"general"}), "windows": len(wins),
                                          "tokens": int(sum(len(w) for w in wins)),
                                          "text": ppl_cfg.text, "tokenizer": str(tokenizer_dir)},
                           **({"perplexity_general": {**ppl_cfg.general.model_dump(), "windows": len(general_wins),
                                                      "tokens": int(sum(len(w) for w in general_wins))}}
                              if general_wins else {}),
                           "agreement_windows": len(agree_wins),
                           "latency": {**cfg.latency.model_dump(), "prompt_tokens": len(latency_prompt),
                                       "host_cpus": host_threads}},
              "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates, "flags": flags,
              "projection": projection_info}
    return _write_reports(report, out_dir, console)


def _fixed_shape(a: Artifact) -> tuple[int, int] | None:
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
    from edgeft.exporters.onnx_encoder import fixed_shape

    info = next((i for i in (_artifact_onnx(a) or {}).get("inputs") or [] if i["name"] == "input_ids"), None)
    return fixed_shape(info["shape"]) if info else None


def _artifact_onnx(a: Artifact) -> dict | None:
    info: dict = {}
    _add_onnx_info(info, a)
    return info.get("onnx")


def _classifier_logits(a: Artifact, reference: Artifact, tok, texts: list[str], max_length: int, threads: int):
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


def _validate_encoders(artifacts, tok, records, out_dir: Path, cfg, devices, required, recipe_name, console,
                       classifier: bool):
    """Encoders (no generation, no perplexity), per artifact vs the reference: embedding agreement, or
    for a sequence classifier accuracy / macro-F1 on the labelled eval split with label agreement and
    logit differences; per-inference latency at ``latency.batch`` x ``latency.seq_len`` (at the
    graph's own shape when its inputs are fixed); compatibility and budgets per device."""
    from edgeft.artifacts import report_fields
    from edgeft.metrics import gate
    from edgeft.runtime.bench import measure_encoder
    from edgeft.validate import gates

    host_threads = os.cpu_count() or 1
    texts = [str(r.get("text", r.get("prompt"))) for r in records]
    reference = next(a for a in artifacts if a.role == "reference")
    shapes = {a.name: _fixed_shape(a) for a in artifacts}
    rep_artifacts: dict[str, dict] = {}
    max_length = 128
    if classifier:
        from edgeft.metrics.classify import agreement, gold_ids, label_index, scores

        index = label_index(reference.path)
        gold = gold_ids(records, index)
        fixed = [s for s in shapes.values() if s]
        max_length = fixed[0][1] if fixed else cfg.latency.seq_len  # every artifact sees the same truncation
        ref_logits = _classifier_logits(reference, reference, tok, texts, max_length, host_threads)
    else:
        ref_emb = _embeddings(reference, tok, texts, host_threads)
    for a in sorted(artifacts, key=lambda a: {"base": 0, "reference": 1}.get(a.role, 2)):
        acc = {"exact_match": None, "json_valid": None, "perplexity": None, "top1_agreement": None, "kl": None,
               "n_examples": len(texts)}
        if classifier:
            log.info("validate: scoring %s (%s %s) on %d labelled examples", a.name, a.format, a.precision, len(texts))
            logits = ref_logits if a is reference else _classifier_logits(a, reference, tok, texts, max_length,
                                                                          host_threads)
            s = scores(logits.argmax(-1), gold, len(index))
            own = shapes[a.name][1] if a.format == "tflite" else max_length
            acc.update({"accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "max_length": own,
                        **agreement(ref_logits, logits)})
        else:
            emb = ref_emb if a is reference else _embeddings(a, tok, texts, host_threads)
            cos = (emb * ref_emb).sum(1)
            acc.update({"embedding_cosine": float(cos.mean()), "embedding_cosine_min": float(cos.min())})
        info = {"role": a.role, "kind": "classifier" if classifier else "encoder", "format": a.format,
                "precision": a.precision, "int8_mode": a.int8_mode, "scheme": a.scheme, "size_bytes": _size_bytes(a),
                "path": str(a.path), "accuracy": acc, "latency": None, **a.extra}
        _add_onnx_info(info, a)
        rep_artifacts[a.name] = info
    lat_cfg = cfg.latency
    latency: dict[tuple[str, int], dict] = {}
    thread_counts = sorted({min(d.cpu.threads, host_threads) for d in devices.values()} | {min(2, host_threads)})
    for a in artifacts:
        if a.format not in ("onnx", "pte", "tflite") or a.role == "base":
            continue  # per-inference latency is measured on ONNX Runtime, ExecuTorch and LiteRT artifacts
        batch, seq = shapes[a.name] or (lat_cfg.batch, lat_cfg.seq_len)
        for t in thread_counts:
            log.info("validate: per-inference latency of %s (batch %d x seq %d) with %d threads", a.name, batch, seq, t)
            m = measure_encoder(a.path, t, batch, seq, lat_cfg.warmup, max(lat_cfg.repeats, 5), fmt=a.format)
            m["label"] = "measured-host"
            latency[(a.name, t)] = m
        rep_artifacts[a.name]["latency"] = latency[(a.name, max(thread_counts))]
    acc_gates = []
    flags: list[str] = []
    ref_acc = rep_artifacts[reference.name]["accuracy"]
    base = next((a for a in artifacts if a.role == "base"), None)
    for a in artifacts:
        if a.role != "artifact":
            continue
        budgets = gates.artifact_budgets(a.budgets, cfg.budgets)
        acc = rep_artifacts[a.name]["accuracy"]
        if not classifier:
            acc_gates += [g.to_dict() for g in gate.evaluate_goal(
                "embedding_cosine", a.name, acc["embedding_cosine"], 1.0, budgets.embedding_cosine,
                higher_is_better=True)]
            continue
        acc_gates += [g.to_dict() for g in gate.evaluate_goal(
            "accuracy", a.name, acc["accuracy"], ref_acc["accuracy"], budgets.accuracy, higher_is_better=True)]
        if base is not None:
            base_acc = rep_artifacts[base.name]["accuracy"]["accuracy"]
            msg = gates.erased_flag(a.name, acc["accuracy"], base_acc, ref_acc["accuracy"], budgets.erased_margin,
                                    metric="accuracy")
            if msg:
                flags.append(msg)
                acc_gates.append(gate.GateResult("fine-tune-erased", a.name, acc["accuracy"], base_acc, False,
                                                  msg).to_dict())
    failed_acc = {g["artifact"] for g in acc_gates if not g["passed"]}

    def remote(dev, a):
        from edgeft.validate.remote import measure_remote_encoder

        batch, seq = shapes[a.name] or (lat_cfg.batch, lat_cfg.seq_len)
        return measure_remote_encoder(dev.remote, a.path, dev.cpu.threads, batch, seq, lat_cfg.warmup,
                                      max(lat_cfg.repeats, 5))

    rep_devices = device_matrix(artifacts, rep_artifacts, latency, devices, required, failed_acc, host_threads,
                                remote)
    passed = not failed_acc and all(d["passed"] for d in rep_devices.values() if d["required"])
    accuracy_protocol = ({"classification": f"argmax of the logits vs the eval labels, texts cut at {max_length} "
                                            "tokens; label agreement and logit differences vs the reference"}
                         if classifier else {"embedding": "mean-pooled last hidden state, L2-normalized"})
    report = {"schema_version": 1, "recipe": recipe_name, **report_fields("classifier" if classifier else "encoder"),
              "reference": reference.name, "passed": passed,
              "protocol": {"eval_examples": len(texts), **accuracy_protocol,
                           "latency": {**lat_cfg.model_dump(), "host_cpus": host_threads}},
              "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates, "flags": flags,
              "projection": {"note": "roofline projection covers decoder LMs only; encoders are measured"}}
    return _write_reports(report, out_dir, console)


def device_matrix(artifacts, rep_artifacts: dict, latency: dict, devices: dict, required, failed_acc: set,
                  host_threads: int, remote=None) -> dict:
    """Per device, per artifact (not the base): compatibility, measured latency at the device's thread count,
    the latency / RAM / size gates, and the verdict (compatible, every gate passed, accuracy gates passed).
    ``latency[(name, threads)]`` holds host measurements; ``remote(dev, artifact)`` measures an ONNX artifact
    on a device with a ``remote`` target (None: never)."""
    from edgeft.validate import compat, gates

    rep_devices: dict[str, dict] = {}
    for dname, dev in devices.items():
        t = min(dev.cpu.threads, host_threads)
        results = {}
        for a in artifacts:
            if a.role == "base":
                continue
            info = rep_artifacts[a.name]
            art = {"name": a.name, "format": a.format, "precision": a.precision, "int8_mode": a.int8_mode,
                   "size_bytes": info["size_bytes"], "onnx": info.get("onnx"), "tflite": info.get("tflite"),
                   "est_ram_mb": None}
            c = compat.check(art, dev)
            host_lat = latency.get((a.name, t))
            device_lat = None
            if remote is not None and dev.remote is not None and c["compatible"] and a.format == "onnx":
                device_lat = remote(dev, a)
            speed = device_lat or (dict(host_lat, label="measured-host") if host_lat else None)
            tflm = (c.get("tflite") or {}).get("tflite_micro") or {}
            macs = (info.get("tflite") or {}).get("macs")
            projected = None
            if device_lat is None and tflm.get("ran") and macs:
                # a microcontroller is nothing like this host: its latency is the graph's int8 ops (2 per MAC)
                # at the profile's sustained int8 rate, not a host measurement
                projected = {"label": "projected", "per_inference_ms_p50": 2 * macs / (dev.compute.int8_gops * 1e6),
                             "macs": int(macs), "int8_gops": dev.compute.int8_gops}
                speed = projected
            g = []
            if c["compatible"]:
                if speed:
                    g += [x.to_dict() for x in gates.latency_gates(
                        dev, a.name, {"label": speed["label"], "per_inference_ms_p50": speed["per_inference_ms_p50"]})]
                if tflm.get("ran") and tflm.get("arena_used_bytes"):
                    # a microcontroller's RAM is the TFLite Micro tensor arena the graph used, not a host process
                    g += [x.to_dict() for x in gates.latency_gates(
                        dev, a.name, {"label": "measured-tflite-micro", "peak_rss_mb": tflm["arena_used_bytes"] / 2**20})]
                elif host_lat:
                    g += [x.to_dict() for x in gates.latency_gates(
                        dev, a.name, {"label": "measured-host", "peak_rss_mb": host_lat["peak_rss_mb"]})]
                g += [x.to_dict() for x in gates.latency_gates(
                    dev, a.name, {"label": "measured-host", "size_mb": info["size_bytes"] / 2**20})]
            passed = c["compatible"] and all(x["passed"] for x in g) and a.name not in failed_acc
            keep = ("label", "per_inference_ms_p50", "per_inference_ms_p95", "peak_rss_mb", "threads", "batch",
                    "seq_len", "device_host")
            results[a.name] = {**c, "est_ram_mb": None, "gates": g, "passed": passed,
                               "gated_on": speed["label"] if speed else None,
                               "latency": {"measured-host": {k: host_lat.get(k) for k in keep if k in host_lat}
                                           if host_lat else None,
                                           "projected": projected,
                                           "measured-device": ({k: device_lat.get(k) for k in keep if k in device_lat}
                                                               if device_lat else None)}}
        rep_devices[dname] = _device_entry(dev, t, dname in required, results, rep_artifacts)
    return rep_devices


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "validate")
