"""Latency of one artifact, measured in a fresh process so peak RSS belongs to that artifact alone.

``measure(...)`` spawns ``python -m edgeft.runtime.bench`` and returns its JSON; the child loads
the artifact with the requested thread count, runs warm-up generations, then timed ones.
``measure_encoder(...)`` does the same for an encoder (``--kind encoder``: ONNX, LiteRT or ExecuTorch):
per-inference latency of one forward pass at a stated batch size and sequence length. The timing loops and
statistics are :mod:`edgeft.runtime.ortcore`'s, the same the device runner reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from edgeft.errors import EdgeftError
from edgeft.runtime.ortcore import OrtEncoder, peak_rss_mb, summarize, timed_encoder_runs, timed_runs

__all__ = ["measure", "measure_encoder", "measure_image", "peak_rss_mb", "run_encoder_inline", "run_image_inline",
           "run_inline", "summarize"]


def run_inline(path: str, fmt: str, threads: int, prompt: list[int], new_tokens: int, warmup: int,
               repeats: int) -> dict:
    """Load the artifact with its runtime and time greedy decoding (:func:`edgeft.runtime.ortcore.timed_runs`)."""
    import time

    from edgeft.runtime.base import load_lm

    t0 = time.perf_counter()
    lm = load_lm(Path(path), fmt, threads)
    out = timed_runs(lm, prompt, new_tokens, warmup, repeats, threads, time.perf_counter() - t0)
    if getattr(lm, "lookahead", 0):  # speculative decoding (the artifact's drafts.json): say so, with its yield
        st = lm.last_stats  # a pass emits its accepted drafts plus one token
        emitted = st.get("passes", 0) + st.get("accepted", 0)
        out.update({"lookahead": lm.lookahead,
                    "passes_per_token": round(st["passes"] / emitted, 3) if emitted else None})
    if getattr(lm, "threads_source", "set") != "set":  # the runtime could not be given a thread count
        out.update({"threads": lm.threads, "threads_source": lm.threads_source})
    return out


def run_encoder_inline(path: str, threads: int, batch: int, seq: int, warmup: int, repeats: int,
                       fmt: str = "onnx") -> dict:
    """Per-inference latency of an ONNX, LiteRT or ExecuTorch (``pte``) encoder: ``warmup`` untimed passes,
    then ``repeats`` timed ones. A LiteRT graph runs at its own fixed shape (one row of its sequence length);
    ``batch`` and ``seq`` must match it, so the numbers are never for a shape the graph did not run."""
    import time

    t0 = time.perf_counter()
    enc = _encoder_runner(Path(path), fmt, threads, batch, seq)
    out = timed_encoder_runs(enc, batch, seq, warmup, repeats, time.perf_counter() - t0)
    if getattr(enc, "threads_source", "set") != "set":
        out["threads_source"] = enc.threads_source
    return out


def run_image_inline(path: str, fmt: str, threads: int, warmup: int, repeats: int) -> dict:
    """Per-image latency of an image classifier artifact (:class:`edgeft.runtime.vision.ImageRuntime`): one
    image per inference at the graph's own input size (reported as ``image_size``; ``seq_len`` is None)."""
    import time

    from edgeft.runtime.vision import ImageRuntime

    t0 = time.perf_counter()
    rt = ImageRuntime(Path(path), fmt, threads)
    out = timed_encoder_runs(rt, 1, None, warmup, repeats, time.perf_counter() - t0)
    out.update({"kind": "image", "image_size": rt.size})
    if rt.threads_source != "set":
        out["threads_source"] = rt.threads_source
    return out


class _LiteRTRunner:
    """A LiteRT graph behind the encoder runner interface (``timed_inference(batch, seq)``, ``threads``)."""

    def __init__(self, path: Path, threads: int, batch: int, seq: int) -> None:
        from edgeft.runtime.litert import LiteRTModel

        self.model, self.threads = LiteRTModel(path, threads), threads
        if (batch, seq) != (1, self.model.seq):
            raise ValueError(f"{path}: the LiteRT graph runs 1 x {self.model.seq}, not {batch} x {seq}")

    def timed_inference(self, batch: int, seq: int) -> float:
        return self.model.timed_inference()


def _encoder_runner(path: Path, fmt: str, threads: int, batch: int, seq: int):
    """The per-inference runner of an encoder/classifier artifact (``timed_inference(batch, seq)``)."""
    from edgeft.runtime.litert import is_litert

    if fmt == "pte":
        from edgeft.runtime.executorch import ExecuTorchClassifier

        return ExecuTorchClassifier(path, threads)
    if fmt == "tflite" or is_litert(path):
        return _LiteRTRunner(path, threads, batch, seq)
    return OrtEncoder(path, threads)


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
                    timeout: float = 900, fmt: str = "onnx") -> dict:
    """``run_encoder_inline`` in a fresh process, so ``peak_rss_mb`` belongs to this encoder alone."""
    if batch < 1 or seq < 1 or threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch, seq, threads, repeats >= 1 and warmup >= 0 "
                         f"(got {batch}, {seq}, {threads}, {repeats}, {warmup})")
    args = ["--kind", "encoder", "--path", str(path), "--threads", str(threads), "--batch", str(batch),
            "--seq", str(seq), "--warmup", str(warmup), "--repeats", str(repeats), "--format", fmt]
    return _run_child(path, args, timeout)


def measure_image(path: Path, fmt: str, threads: int, warmup: int = 1, repeats: int = 10,
                  timeout: float = 900) -> dict:
    """``run_image_inline`` in a fresh process, so ``peak_rss_mb`` belongs to this classifier alone."""
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need threads, repeats >= 1 and warmup >= 0 (got {threads}, {repeats}, {warmup})")
    args = ["--kind", "image", "--path", str(path), "--threads", str(threads), "--warmup", str(warmup),
            "--repeats", str(repeats), "--format", fmt]
    return _run_child(path, args, timeout)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Measure decode latency of one artifact, or per-inference "
                                            "latency of an ONNX encoder (internal helper).")
    p.add_argument("--kind", choices=("lm", "encoder", "image"), default="lm")
    p.add_argument("--path", required=True)
    p.add_argument("--format", help="lm: pytorch, onnx, torchscript, genai, gguf or pte; encoder: onnx or pte")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prompt", help="lm only: JSON list of token ids")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=1, help="encoder only")
    p.add_argument("--seq", type=int, default=128, help="encoder only: sequence length")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.kind == "image":
        res = run_image_inline(a.path, a.format or "onnx", a.threads, a.warmup, a.repeats)
    elif a.kind == "encoder":
        if a.batch < 1 or a.seq < 1 or a.repeats < 1:
            p.error("--kind encoder needs --batch, --seq and --repeats >= 1")
        res = run_encoder_inline(a.path, a.threads, a.batch, a.seq, a.warmup, a.repeats, a.format or "onnx")
    else:
        if a.format is None or a.prompt is None:
            p.error("--kind lm needs --format and --prompt")
        res = run_inline(a.path, a.format, a.threads, json.loads(a.prompt), a.new_tokens, a.warmup, a.repeats)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
