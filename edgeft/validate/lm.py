"""Validate causal LMs: every artifact (and the merged reference) x every device profile.

Per artifact: task metric (exact match, JSON validity) on the eval split, perplexity on held-out
text with a fixed protocol (and on general text, when the recipe asks), top-1 agreement and KL vs the
merged model. Per distinct thread count: latency measured on this machine (``measured-host``) in a fresh
process with peak RSS. Per device: a roofline projection with a per-token overhead calibrated on
``host``, compatibility (format, precision, int8 mode, ops, shapes, size, estimated RAM) and budgets
(:mod:`edgeft.validate.matrix`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeft.validate.common import (Context, accuracy_gates, entry, finish, measure_host, reference_of,
                                    report_order)
from edgeft.validate.matrix import Timing, device_matrix

log = logging.getLogger(__name__)

# The latency keys a device result keeps.
KEEP = ("label", "ttft_ms_p50", "ttft_ms_p95", "per_token_ms_p50", "decode_tok_s", "peak_rss_mb", "threads", "bound",
        "device_host", "lookahead", "passes_per_token")


def validate_lm(artifacts, tokenizer_dir: Path, eval_records: list[dict], out_dir: Path, cfg=None,
                system_prompt: str = "", heldout_text: str | None = None, recipe_name: str = "", console=None,
                general_text: str | None = None):
    """Validate causal-LM ``artifacts`` (one has role 'reference'); see :func:`edgeft.validate.validate`.

    ``heldout_text`` defaults to the eval conversations rendered with the chat template; no eval records
    (raw-text runs): perplexity is the accuracy gate.
    """
    from transformers import AutoTokenizer

    from edgeft.data.templates import prompt_ids
    from edgeft.metrics.text import task_metrics

    ctx = Context.of(cfg, out_dir)
    cfg = ctx.cfg
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    records = eval_records[: cfg.eval_examples]
    reference = reference_of(artifacts)
    wins, general_wins = _windows(tok, cfg.perplexity, eval_records, system_prompt, heldout_text, general_text)
    agree_wins = wins[:2]
    rep_artifacts = _score(artifacts, ctx, wins, general_wins, agree_wins,
                           lambda lm: task_metrics(lm, tok, records, system_prompt, cfg.max_new_tokens))

    # latency on this machine, once per distinct effective thread count
    from edgeft.config.loader import load_device
    from edgeft.runtime.bench import measure

    latency_prompt = prompt_ids(tok, system_prompt, cfg.latency.prompt)
    host_dev = load_device("host")
    host_t = min(host_dev.cpu.threads, ctx.host_threads)
    lat = cfg.latency

    def measure_lm(a, t):
        log.info("validate: latency of %s with %d threads", a.name, t)
        return measure(a.path, a.format, t, latency_prompt, lat.new_tokens, lat.warmup, lat.repeats)

    timed = [a for a in artifacts if a.role != "base"]  # the base has the merged model's architecture and size
    latency = measure_host(timed, rep_artifacts, ctx.thread_counts(host_t), host_t, measure_lm)
    projected, projection_info = _projection(timed, rep_artifacts, latency, reference, host_dev, host_t,
                                             len(latency_prompt), lat.new_tokens)

    # accuracy gates (per artifact vs the merged reference) and the fine-tune-erased flag
    ref_acc = rep_artifacts[reference.name]["accuracy"]
    acc_gates, flags, failed_acc = accuracy_gates(
        artifacts, rep_artifacts, cfg.budgets,
        lambda b: {"exact_match": b.exact_match if records else None,  # no task examples (raw text): perplexity
                   "perplexity": b.perplexity, "perplexity_general": b.perplexity_general if general_wins else None},
        ref_acc, erased_metric="exact_match")

    # devices: compatibility + budgets
    config_json = _config(reference)

    def remote(dev, a):
        from edgeft.validate.remote import measure_remote

        log.info("validate: latency of %s on %s over SSH", a.name, dev.remote.ssh)
        return measure_remote(dev.remote, a.path, latency_prompt, lat.new_tokens, dev.cpu.threads, lat.warmup,
                              lat.repeats)

    def est_ram_mb(info):
        from edgeft.validate import compat

        return compat.estimate_ram_mb(info["size_bytes"], config_json, cfg.context_len)

    timing = Timing(("ttft_ms_p50", "decode_tok_s"), KEEP, est_ram_mb, remote,
                    lambda dev, a, info, c: {k: v for k, v in projected(a.name, dev).items() if k in KEEP})
    rep_devices = device_matrix(artifacts, rep_artifacts, latency, ctx, failed_acc, timing)
    protocol = {"eval_examples": len(records), "max_new_tokens": cfg.max_new_tokens,
                **_perplexity_protocol(cfg.perplexity, wins, general_wins, tokenizer_dir),
                "agreement_windows": len(agree_wins),
                "latency": {**lat.model_dump(), "prompt_tokens": len(latency_prompt), "host_cpus": ctx.host_threads}}
    report = {"schema_version": 1, "recipe": recipe_name, "reference": reference.name, "passed": None,
              "protocol": protocol, "artifacts": rep_artifacts, "devices": rep_devices, "gates": acc_gates,
              "flags": flags, "projection": projection_info}
    return finish(report, ctx, failed_acc, console)


def _perplexity_protocol(ppl_cfg, wins, general_wins, tokenizer_dir: Path) -> dict:
    """The report's perplexity protocol: settings, windows and tokens of the held-out (and general) text."""
    out = {"perplexity": {**ppl_cfg.model_dump(exclude={"general"}), "windows": len(wins),
                          "tokens": int(sum(len(w) for w in wins)), "text": ppl_cfg.text,
                          "tokenizer": str(tokenizer_dir)}}
    if general_wins:
        out["perplexity_general"] = {**ppl_cfg.general.model_dump(), "windows": len(general_wins),
                                     "tokens": int(sum(len(w) for w in general_wins))}
    return out


def _windows(tok, ppl_cfg, eval_records, system_prompt: str, heldout_text, general_text):
    """Token windows of the held-out text (default: the eval conversations) and of the general text (or None)."""
    from edgeft.data.templates import conversation_text
    from edgeft.metrics.lm import text_windows

    if heldout_text is None:
        heldout_text = "".join(conversation_text(tok, system_prompt, r["prompt"], r["response"]) for r in eval_records)
    wins = text_windows(tok, heldout_text, ppl_cfg.seq_len, ppl_cfg.stride, ppl_cfg.max_tokens)
    general_wins = None
    if general_text is not None and ppl_cfg.general is not None:
        g = ppl_cfg.general
        general_wins = text_windows(tok, general_text, g.seq_len, g.stride, g.max_tokens)
    return wins, general_wins


def _score(artifacts, ctx, wins, general_wins, agree_wins, task) -> dict:
    """Accuracy once per artifact, the reference first (the others are compared with its logits); report entries
    in report order. ``task(lm)`` gives the task metrics."""
    from edgeft.metrics import lm as quality
    from edgeft.runtime.lm import load_lm

    rep_artifacts: dict[str, dict] = {}
    ref_logits = None
    for a in sorted(artifacts, key=lambda a: a.role != "reference"):
        log.info("validate: scoring %s (%s %s)", a.name, a.format, a.precision)
        lm = load_lm(a.path, a.format, ctx.host_threads)
        acc = task(lm)
        acc["perplexity"] = quality.perplexity(lm, wins)
        if general_wins:
            acc["perplexity_general"] = quality.perplexity(lm, general_wins)
        if a.role == "reference":
            ref_logits = [lm.logits(w) for w in agree_wins]
            acc.update({"top1_agreement": 1.0, "kl": 0.0})
        else:
            acc.update(quality.compare(ref_logits, lm, agree_wins))
        del lm
        rep_artifacts[a.name] = entry(a, acc)
    return {a.name: rep_artifacts[a.name] for a in report_order(artifacts)}


def _projection(timed, rep_artifacts, latency, reference, host_dev, host_t: int, prompt_tokens: int,
                new_tokens: int):
    """A roofline per artifact x device with a per-token overhead calibrated on this machine: ``(projected(name,
    device) -> latency dict, the report's projection section with projected vs measured on host)``."""
    from edgeft.validate import projection as proj

    ctx_len = proj.mean_decode_context(prompt_tokens, new_tokens)
    config_json = _config(reference)
    costs = {a.name: proj.model_costs(rep_artifacts[a.name].get("onnx"), config_json,
                                      rep_artifacts[a.name]["size_bytes"], a.precision) for a in timed}
    onnx_arts = [a for a in timed if a.role == "artifact" and a.format == "onnx"]
    calib = next((a for a in onnx_arts if a.precision == "fp32"), onnx_arts[0] if onnx_arts else reference)

    def passes(name: str) -> float:
        """Forward passes per token: below 1 when the artifact decodes speculatively (its drafts.json); a pass
        that verifies a few drafted tokens reads the weights once, like a one-token pass."""
        return float(latency.get((name, host_t), {}).get("passes_per_token") or 1.0)

    overhead = proj.calibrate_overhead(costs[calib.name], host_dev,
                                       latency[(calib.name, host_t)]["per_token_ms_p50"] / passes(calib.name), ctx_len)

    def projected(name: str, dev) -> dict:
        d = proj.project_decode(costs[name], dev, ctx_len, overhead)
        pf = proj.project_prefill(costs[name], dev, prompt_tokens, overhead)
        per_token, ppt = d["per_token_ms"] * passes(name), passes(name)
        notes = d["assumptions"] + ([f"speculative decoding: {ppt:.3g} forward passes per token, as measured on "
                                     "this machine"] if ppt < 1 else [])
        return {"label": "projected", "per_token_ms_p50": per_token, "decode_tok_s": 1000.0 / per_token,
                "ttft_ms_p50": pf["ttft_ms"], "bound": d["bound"], "bytes_per_token": d["bytes_per_token"],
                "flops_per_token": d["flops_per_token"], "assumptions": notes}

    host_projection = {}
    for a in timed:
        if a.format != "onnx":
            continue  # the overhead is calibrated on ONNX Runtime; eager PyTorch has its own (larger) one
        p = projected(a.name, host_dev)
        m = latency[(a.name, host_t)]
        host_projection[a.name] = {"projected": {k: p[k] for k in ("per_token_ms_p50", "decode_tok_s", "ttft_ms_p50",
                                                                    "bound")},
                                   "measured": {k: m[k] for k in ("per_token_ms_p50", "decode_tok_s", "ttft_ms_p50")},
                                   "error": proj.projection_error(
                                       {"per_token_ms": p["per_token_ms_p50"], "ttft_ms": p["ttft_ms_p50"]}, m)}
    return projected, {"calibrated_on": calib.name, "overhead_ms": overhead, "context_len": ctx_len,
                       "host_threads": host_t, "host": host_projection}


def _config(reference) -> dict:
    """The reference model's config.json (empty when it has none)."""
    f = Path(reference.path) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else {}
