"""Standalone latency runner for an ONNX decoder with KV cache, copied to a device and run there.

Usage (on the device)::

    python3 remote_runner.py --dir ARTIFACT_DIR --prompt '[1, 2, 3]' --new-tokens 32 \
        --threads 4 --warmup 1 --repeats 5

Prints one JSON line shaped like ``edgeft.runtime.bench.run_inline``'s result, plus ``python``,
``onnxruntime``, ``machine`` and ``hostname``.

This file repeats the greedy KV-cache loop of ``edgeft.runtime.lm.OrtLM.timed_generate`` and
the statistics of ``edgeft.runtime.bench.summarize`` on purpose: it runs on the device, where
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
    """The decoder graph: ``path`` itself, a well-known name in the folder, or its first *.onnx."""
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if not found:
        raise SystemExit(f"{path}: no .onnx file in this folder")
    return found[0]


class Decoder:
    """input_ids, attention_mask, [position_ids], past_key_values.N.key/value -> logits, present.N.*."""

    def __init__(self, path: Path, threads: int) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure greedy decode latency of an ONNX decoder with KV cache.")
    p.add_argument("--dir", required=True, type=Path, help="folder holding the .onnx file (or the file itself)")
    p.add_argument("--prompt", required=True, help="JSON list of prompt token ids")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra_op_num_threads")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    prompt = [int(t) for t in json.loads(a.prompt)]
    if not prompt or a.new_tokens < 2 or a.repeats < 1 or a.threads < 1 or a.warmup < 0:
        p.error("need a non-empty prompt, --new-tokens >= 2, --repeats >= 1, --threads >= 1, --warmup >= 0")
    print(json.dumps(run(a.dir, a.threads, prompt, a.new_tokens, a.warmup, a.repeats)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
