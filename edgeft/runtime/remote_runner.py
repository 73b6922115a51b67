"""Standalone latency runner for an ONNX decoder with KV cache or an ONNX encoder, copied to a device and run there.

Usage (on the device)::

    python3 remote_runner.py --dir ARTIFACT_DIR --prompt '[1, 2, 3]' --new-tokens 32 \
        --threads 4 --warmup 1 --repeats 5
    python3 remote_runner.py --kind encoder --dir ARTIFACT_DIR --batch 1 --seq 128 \
        --threads 4 --warmup 1 --repeats 10

Prints one JSON line shaped like ``edgeft.runtime.bench.run_inline``'s result (or, with
``--kind encoder``, ``run_encoder_inline``'s), plus ``python``, ``onnxruntime``, ``machine`` and
``hostname``.

This file repeats the greedy KV-cache loop of ``edgeft.runtime.lm.OrtLM.timed_generate``, the
encoder feeds of ``edgeft.runtime.encoder.encoder_feeds`` and the statistics of
``edgeft.runtime.bench.summarize`` / ``run_encoder_inline`` on purpose: it runs on the device, where
edgeft (and torch, transformers, pydantic) is not installed, so it may import only the standard
library, numpy and onnxruntime. Keep the two in step when either changes.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

_KV_DTYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}


def find_onnx(path: Path) -> Path:
    """The graph to run: ``path`` itself, a well-known name in the folder, or its first *.onnx."""
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if not found:
        raise SystemExit(f"{path}: no .onnx file in this folder")
    return found[0]


def _session(path: Path, threads: int):
    """A CPU session with the same options as edgeft.runtime.lm.session_options."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Decoder:
    """input_ids, attention_mask, [position_ids], past_key_values.N.key/value -> logits, present.N.*."""

    def __init__(self, path: Path, threads: int) -> None:
        self.sess = _session(path, threads)
        inputs = {i.name: i for i in self.sess.get_inputs()}
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.past = {n: i for n, i in inputs.items() if n.startswith("past_key_values")}
        self.has_pos = "position_ids" in inputs
        if "input_ids" not in inputs or "logits" not in self.output_names:
            raise SystemExit(f"{path}: not a causal-LM graph (needs input_ids -> logits)")

    def empty_past(self) -> dict:
        return {n: np.zeros((1, i.shape[1], 0, i.shape[3]), _KV_DTYPES.get(i.type, np.float32))
                for n, i in self.past.items()}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict) -> tuple[np.ndarray, dict]:
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if self.has_pos:  # batch of one, no padding: positions are 0..len-1
            feeds["position_ids"] = np.arange(mask.shape[1] - ids.shape[1], mask.shape[1], dtype=np.int64)[None, :]
        named = dict(zip(self.output_names, self.sess.run(None, feeds)))
        present = {n.replace("present", "past_key_values"): v for n, v in named.items() if n.startswith("present")}
        return named["logits"], present

    def timed_generate(self, prompt: list[int], new_tokens: int) -> tuple[float, list[float]]:
        """Greedy: one prefill (TTFT), then ``new_tokens - 1`` cached single-token steps."""
        ids = np.asarray([prompt], np.int64)
        mask = np.ones_like(ids)
        t0 = time.perf_counter()
        logits, past = self.step(ids, mask, self.empty_past())
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(new_tokens - 1):
            nxt = logits[:, -1, :].argmax(-1)[:, None].astype(np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
            t = time.perf_counter()
            logits, past = self.step(nxt, mask, past)
            steps.append(time.perf_counter() - t)
        return ttft, steps


class Encoder:
    """input_ids, attention_mask, [token_type_ids] -> anything; one forward pass per inference."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")
    INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.sess = _session(path, threads)
        self.inputs = {i.name: i.type for i in self.sess.get_inputs()}
        if "input_ids" not in self.inputs:
            raise SystemExit(f"{path}: not an encoder graph (no input_ids input)")
        for name, typ in self.inputs.items():
            if name not in self.INPUTS:
                raise SystemExit(f"{path}: input {name!r} is not an encoder input "
                                 f"(expected only {', '.join(self.INPUTS)}); is this an encoder graph?")
            if typ not in self.INT_TYPES:
                raise SystemExit(f"{path}: input {name!r} has type {typ}; expected tensor(int64) or tensor(int32)")

    def feeds(self, batch: int, seq: int) -> dict:
        """Token ids 100..199 repeating, attention mask ones, token types zeros (as in edgeft.runtime.encoder)."""
        out = {}
        for name, typ in self.inputs.items():
            if name == "input_ids":
                arr = 100 + np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) % 100
            elif name == "attention_mask":
                arr = np.ones((batch, seq), np.int64)
            else:
                arr = np.zeros((batch, seq), np.int64)
            out[name] = arr.astype(self.INT_TYPES[typ])
        return out

    def timed_inference(self, feeds: dict) -> float:
        t0 = time.perf_counter()
        self.sess.run(None, feeds)
        return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """VmHWM of this process in MiB (0.0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), q))


def summarize(ttfts: list[float], steps: list[list[float]]) -> dict:
    """Same keys and statistics as ``edgeft.runtime.bench.summarize``."""
    flat = [s for run in steps for s in run]
    return {"ttft_ms_p50": 1e3 * _pct(ttfts, 50), "ttft_ms_p95": 1e3 * _pct(ttfts, 95),
            "per_token_ms_p50": 1e3 * _pct(flat, 50), "per_token_ms_p95": 1e3 * _pct(flat, 95),
            "decode_tok_s": 1.0 / _pct(flat, 50), "runs": len(ttfts), "decode_steps": len(flat),
            "samples_ms": [round(1e3 * s, 3) for s in flat], "ttft_samples_ms": [round(1e3 * t, 3) for t in ttfts]}


def run(path: Path, threads: int, prompt: list[int], new_tokens: int, warmup: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    dec = Decoder(find_onnx(path), threads)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        dec.timed_generate(prompt, new_tokens)
    ttfts, steps = [], []
    for _ in range(repeats):
        ttft, st = dec.timed_generate(prompt, new_tokens)
        ttfts.append(ttft)
        steps.append(st)
    out = summarize(ttfts, steps)
    out.update({"threads": threads, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "warmup": warmup,
                "load_seconds": load_s, "peak_rss_mb": peak_rss_mb(),
                "python": platform.python_version(), "onnxruntime": ort.__version__,
                "machine": platform.machine(), "hostname": socket.gethostname()})
    return out


def _host_info() -> dict:
    return {"python": platform.python_version(), "onnxruntime": ort.__version__,
            "machine": platform.machine(), "hostname": socket.gethostname()}


def run_encoder(path: Path, threads: int, batch: int, seq: int, warmup: int, repeats: int) -> dict:
    """Same keys and statistics as ``edgeft.runtime.bench.run_encoder_inline``, plus host info."""
    t0 = time.perf_counter()
    enc = Encoder(find_onnx(path), threads)
    load_s = time.perf_counter() - t0
    feeds = enc.feeds(batch, seq)
    for _ in range(warmup):
        enc.timed_inference(feeds)
    samples = [enc.timed_inference(feeds) for _ in range(repeats)]
    out = {"kind": "encoder", "per_inference_ms_p50": 1e3 * _pct(samples, 50),
           "per_inference_ms_p95": 1e3 * _pct(samples, 95), "samples_ms": [round(1e3 * s, 3) for s in samples],
           "batch": batch, "seq_len": seq, "threads": threads, "warmup": warmup, "runs": len(samples),
           "load_seconds": load_s, "peak_rss_mb": peak_rss_mb()}
    out.update(_host_info())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure greedy decode latency of an ONNX decoder with KV cache, "
                                            "or per-inference latency of an ONNX encoder (--kind encoder).")
    p.add_argument("--kind", choices=("lm", "encoder"), default="lm")
    p.add_argument("--dir", required=True, type=Path, help="folder holding the .onnx file (or the file itself)")
    p.add_argument("--prompt", help="lm: JSON list of prompt token ids (required)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=1, help="encoder: batch size")
    p.add_argument("--seq", type=int, default=128, help="encoder: sequence length")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra_op_num_threads")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.kind == "encoder":
        if a.batch < 1 or a.seq < 1 or a.repeats < 1 or a.threads < 1 or a.warmup < 0:
            p.error("need --batch >= 1, --seq >= 1, --repeats >= 1, --threads >= 1, --warmup >= 0")
        print(json.dumps(run_encoder(a.dir, a.threads, a.batch, a.seq, a.warmup, a.repeats)))
        sys.stdout.flush()
        return
    if a.prompt is None:
        p.error("--prompt is required (unless --kind encoder)")
    prompt = [int(t) for t in json.loads(a.prompt)]
    if not prompt or a.new_tokens < 2 or a.repeats < 1 or a.threads < 1 or a.warmup < 0:
        p.error("need a non-empty prompt, --new-tokens >= 2, --repeats >= 1, --threads >= 1, --warmup >= 0")
    print(json.dumps(run(a.dir, a.threads, prompt, a.new_tokens, a.warmup, a.repeats)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
