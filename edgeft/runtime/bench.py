"""Latency of one artifact, measured in a fresh process so peak RSS belongs to that artifact alone.

``measure(...)`` spawns ``python -m edgeft.runtime.bench`` and returns its JSON; the child loads
the artifact with the requested thread count, runs warm-up generations, then timed ones.
``measure_encoder(...)`` does the same for an ONNX or LiteRT encoder (``--kind encoder``): per-inference
latency of one forward pass at a stated batch size and sequence length.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import EdgeftError


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), q))


def summarize(ttfts: list[float], steps: list[list[float]]) -> dict:
    """p50/p95 of TTFT over runs; decode tok/s from the median per-token time over all decode steps."""
    flat = [s for run in steps for s in run]
    return {"ttft_ms_p50": 1e3 * _pct(ttfts, 50), "ttft_ms_p95": 1e3 * _pct(ttfts, 95),
            "per_token_ms_p50": 1e3 * _pct(flat, 50), "per_token_ms_p95": 1e3 * _pct(flat, 95),
            "decode_tok_s": 1.0 / _pct(flat, 50), "runs": len(ttfts), "decode_steps": len(flat),
            "samples_ms": [round(1e3 * s, 3) for s in flat], "ttft_samples_ms": [round(1e3 * t, 3) for t in ttfts]}


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB.

    Linux keeps ru_maxrss across fork+exec, so a child started by a big parent would report the
    parent's peak; VmHWM in /proc/self/status belongs to the new address space only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_inline(path: str, fmt: str, threads: int, prompt: list[int], new_tokens: int, warmup: int,
               repeats: int) -> dict:
    import time

    from edgeft.runtime.lm import load_lm

    t0 = time.perf_counter()
    lm = load_lm(Path(path), fmt, threads)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        lm.timed_generate(prompt, new_tokens)
    ttfts, steps = [], []
    for _ in range(repeats):
        ttft, st = lm.timed_generate(prompt, new_tokens)
        ttfts.append(ttft)
        steps.append(st)
    out = summarize(ttfts, steps)
    out.update({"threads": threads, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "warmup": warmup,
                "load_seconds": load_s, "peak_rss_mb": peak_rss_mb()})
    return out


def run_encoder_inline(path: str, threads: int, batch: int, seq: int, warmup: int, repeats: int) -> dict:
    """Per-inference latency of an ONNX or LiteRT encoder: ``warmup`` untimed passes, then ``repeats`` timed ones.

    A LiteRT graph runs at its own fixed shape (one row of its sequence length); ``batch`` and ``seq``
    must match it, so the numbers are never for a shape the graph did not run.
    """
    import time

    from edgeft.runtime.litert import LiteRTModel, is_litert

    t0 = time.perf_counter()
    if is_litert(Path(path)):
        lite = LiteRTModel(Path(path), threads)
        if (batch, seq) != (1, lite.seq):
            raise ValueError(f"{path}: the LiteRT graph runs 1 x {lite.seq}, not {batch} x {seq}")
        run = lite.timed_inference
    else:
        from edgeft.runtime.encoder import OrtEncoder

        enc = OrtEncoder(Path(path), threads)

        def run() -> float:
            return enc.timed_inference(batch, seq)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    samples = [run() for _ in range(repeats)]
    return {"kind": "encoder", "per_inference_ms_p50": 1e3 * _pct(samples, 50),
            "per_inference_ms_p95": 1e3 * _pct(samples, 95), "samples_ms": [round(1e3 * s, 3) for s in samples],
            "batch": batch, "seq_len": seq, "threads": threads, "warmup": warmup, "runs": len(samples),
            "load_seconds": load_s, "peak_rss_mb": peak_rss_mb()}


def _run_child(path: Path, args: list[str], timeout: float, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgeft.runtime.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EdgeftError(f"latency run of {path} failed: {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(path: Path, fmt: str, threads: int, prompt: Sequence[int], new_tokens: int, warmup: int = 1,
            repeats: int = 5, timeout: float = 900) -> dict:
    args = ["--path", str(path), "--format", fmt, "--threads",
            str(threads), "--prompt", json.dumps(list(map(int, prompt))), "--new-tokens", str(new_tokens),
            "--warmup", str(warmup), "--repeats", str(repeats)]
    env = None
    if fmt in ("pytorch", "torchscript"):
        import os

        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return _run_child(path, args, timeout, env)


def measure_encoder(path: Path, threads: int, batch: int, seq: int, warmup: int = 1, repeats: int = 10,
                    timeout: float = 900) -> dict:
    """``run_encoder_inline`` in a fresh process, so ``peak_rss_mb`` belongs to this encoder alone."""
    if batch < 1 or seq < 1 or threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch, seq, threads, repeats >= 1 and warmup >= 0 "
                         f"(got {batch}, {seq}, {threads}, {repeats}, {warmup})")
    args = ["--kind", "encoder", "--path", str(path), "--threads", str(threads), "--batch", str(batch),
            "--seq", str(seq), "--warmup", str(warmup), "--repeats", str(repeats)]
    return _run_child(path, args, timeout)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Measure decode latency of one artifact, or per-inference "
                                            "latency of an ONNX encoder (internal helper).")
    p.add_argument("--kind", choices=("lm", "encoder"), default="lm")
    p.add_argument("--path", required=True)
    p.add_argument("--format", help="lm only: pytorch, onnx or torchscript")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prompt", help="lm only: JSON list of token ids")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=1, help="encoder only")
    p.add_argument("--seq", type=int, default=128, help="encoder only: sequence length")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.kind == "encoder":
        if a.batch < 1 or a.seq < 1 or a.repeats < 1:
            p.error("--kind encoder needs --batch, --seq and --repeats >= 1")
        res = run_encoder_inline(a.path, a.threads, a.batch, a.seq, a.warmup, a.repeats)
    else:
        if a.format is None or a.prompt is None:
            p.error("--kind lm needs --format and --prompt")
        res = run_inline(a.path, a.format, a.threads, json.loads(a.prompt), a.new_tokens, a.warmup, a.repeats)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
