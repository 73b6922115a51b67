"""Standalone latency runner for an ONNX decoder with KV cache or an ONNX encoder, copied to a device and run there.

Usage (on the device, with ``ortcore.py`` beside this file)::

    python3 remote_runner.py --dir ARTIFACT_DIR --prompt '[1, 2, 3]' --new-tokens 32 \
        --threads 4 --warmup 1 --repeats 5 [--shared-kv 0|1] [--io-binding 0|1]
    python3 remote_runner.py --kind encoder --dir ARTIFACT_DIR --batch 1 --seq 128 \
        --threads 4 --warmup 1 --repeats 10

Prints one JSON line shaped like ``edgeft.runtime.bench.run_inline``'s result (or, with
``--kind encoder``, ``run_encoder_inline``'s), plus ``python``, ``onnxruntime``, ``machine`` and
``hostname``.

The device has no edgeft (nor torch, transformers, pydantic), so this file imports only the
standard library and :mod:`edgeft.runtime.ortcore`, which ``edgeft.validate.remote`` copies next to
it (``RUNNER_FILES``) and which needs only numpy and onnxruntime. That module is the host's own
decode loop (:class:`~edgeft.runtime.ortcore.OrtDecoder`, which ``OrtLM`` is), encoder pass and
statistics, so the device runs what the host runs: IO binding where it is the default, the KV head
size from ``config.json`` / ``genai_config.json`` (copied with the graph) when the graph leaves it
symbolic. ``--shared-kv`` is the host's answer to "is this a GroupQueryAttention graph?", which
needs the ``onnx`` package to read from the graph.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

if __package__:  # imported from the installed package (the host, tests)
    from edgeft.runtime import ortcore
else:  # run as a script on the device: ortcore.py was copied beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ortcore


def host_info() -> dict:
    import onnxruntime as ort

    return {"python": platform.python_version(), "onnxruntime": ort.__version__,
            "machine": platform.machine(), "hostname": socket.gethostname()}


def run(path: Path, threads: int, prompt: list[int], new_tokens: int, warmup: int, repeats: int,
        io_binding: bool | None = None, shared_kv: bool | None = None) -> dict:
    """Greedy decode latency of the decoder at ``path``: the keys of ``run_inline`` plus :func:`host_info`."""
    t0 = time.perf_counter()
    dec = ortcore.OrtDecoder(path, threads, io_binding=io_binding, shared_kv=shared_kv)
    out = ortcore.timed_runs(dec, prompt, new_tokens, warmup, repeats, threads, time.perf_counter() - t0)
    out.update(host_info())
    return out


def run_encoder(path: Path, threads: int, batch: int, seq: int, warmup: int, repeats: int) -> dict:
    """Per-inference latency of the encoder at ``path``: the keys of ``run_encoder_inline`` plus host info."""
    t0 = time.perf_counter()
    enc = ortcore.OrtEncoder(path, threads)
    out = ortcore.timed_encoder_runs(enc, batch, seq, warmup, repeats, time.perf_counter() - t0)
    out.update(host_info())
    return out


def _tristate(text: str) -> bool | None:
    return None if text == "auto" else text == "1"


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
    p.add_argument("--shared-kv", choices=("auto", "0", "1"), default="auto",
                   help="lm: 1 for a GroupQueryAttention graph (auto: read the graph, needs the onnx package)")
    p.add_argument("--io-binding", choices=("auto", "0", "1"), default="auto",
                   help="lm: the IO-bound decode loop (auto: the host's default for this kind of graph)")
    a = p.parse_args(argv)
    try:
        if a.kind == "encoder":
            if a.batch < 1 or a.seq < 1 or a.repeats < 1 or a.threads < 1 or a.warmup < 0:
                p.error("need --batch >= 1, --seq >= 1, --repeats >= 1, --threads >= 1, --warmup >= 0")
            res = run_encoder(a.dir, a.threads, a.batch, a.seq, a.warmup, a.repeats)
        else:
            if a.prompt is None:
                p.error("--prompt is required (unless --kind encoder)")
            prompt = [int(t) for t in json.loads(a.prompt)]
            if not prompt or a.new_tokens < 2 or a.repeats < 1 or a.threads < 1 or a.warmup < 0:
                p.error("need a non-empty prompt, --new-tokens >= 2, --repeats >= 1, --threads >= 1, --warmup >= 0")
            res = run(a.dir, a.threads, prompt, a.new_tokens, a.warmup, a.repeats,
                      io_binding=_tristate(a.io_binding), shared_kv=_tristate(a.shared_kv))
    except ortcore.GraphError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
