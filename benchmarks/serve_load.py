"""Load on ``edgeft serve``: closed-loop concurrent clients on loopback against a served bundle.

Usage (from the repository root, after the quickstart run)::

    flock /tmp/edgeft-heavy.lock python benchmarks/serve_load.py runs/quickstart/package/quickstart-0.1.0 \\
        --concurrency 1,2,4,8 --requests 24 --max-tokens 32 --markdown

The server runs in its own process with its defaults (the device profile's threads, concurrency =
threads, queue = 4 x concurrency). At each client concurrency C, C clients each send greedy chat
requests one after another (prompts from the quickstart's held-out intent utterances) until
``--requests`` have been sent in all; every request is accounted for (200, 429 or error). Then the
same prompts run directly on the runtime (the engine the server uses, in this process, one at a time):
the serving overhead at concurrency 1 is served p50 / direct p50 - 1.

``--llamacpp FILE.gguf`` runs the same levels against llama.cpp's own OpenAI-compatible server
(``python -m llama_cpp.server``, from the ``bench`` extra) on a GGUF of the same model, with the
same thread count, as the anchor: build the file with ``edgeft export runs/quickstart/merge --out
runs/gguf-q4_0 --preset gguf-q4_0``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def prompts(n: int) -> list[str]:
    from edgeft.data.intents import generate

    return [r["prompt"] for r in generate(1, max(n, 1), seed=0)[1]][:n]


async def level(url: str, model: str, conc: int, total: int, texts: list[str], max_tokens: int) -> dict:
    import httpx

    lat, toks, codes = [], [], []
    sent = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                "max_tokens": max_tokens, "temperature": 0})
            codes.append(r.status_code)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
                toks.append(r.json()["usage"]["completion_tokens"])

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as c:
        await asyncio.gather(*[client(c) for _ in range(conc)])
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"concurrency": conc, "requests": total, "ok": codes.count(200), "http_429": codes.count(429),
            "errors": sum(1 for x in codes if x not in (200, 429)), "lost": total - len(codes),
            "req_s": len(lat) / wall, "p50_ms": 1e3 * q[49], "p95_ms": 1e3 * q[94], "p99_ms": 1e3 * q[98],
            "tok_s": sum(toks) / wall, "mean_tokens": statistics.mean(toks) if toks else 0}


def direct(bundle: Path, texts: list[str], max_tokens: int) -> dict:
    from edgeft.serve.bundle import open_bundle
    from edgeft.serve.engine import LMEngine

    b = open_bundle(bundle)
    eng = LMEngine(b)
    lat = []
    for i, t in enumerate(texts):
        ids = eng.chat_ids([{"role": "user", "content": t}])
        t0 = time.perf_counter()
        eng.complete(ids, max_tokens)
        if i:  # the first run warms the session up, as the server's first request does
            lat.append(time.perf_counter() - t0)
    b.close()
    return {"p50_ms": 1e3 * statistics.median(lat), "artifact": b.artifact, "threads": b.threads}


def wait_ready(url: str, tries: int = 600) -> None:
    import httpx

    for _ in range(tries):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url}: the server did not come up")


def llamacpp_rows(gguf: Path, threads: int, args, texts: list[str]) -> dict:
    """The same load levels against ``python -m llama_cpp.server`` serving ``gguf``."""
    import llama_cpp
    from serve_support import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                               "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                               "--n_ctx", "2048", "--model_alias", "anchor"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url + "/v1/models")
        asyncio.run(level(url, "anchor", 1, 2, texts, args.max_tokens))  # warm-up
        rows = [asyncio.run(level(url, "anchor", int(c), args.requests, texts, args.max_tokens))
                for c in args.concurrency.split(",")]
    finally:
        server.terminate()
        server.wait(60)
    return {"rows": rows, "version": llama_cpp.__version__, "threads": threads, "gguf": str(gguf)}


def print_rows(rows: list[dict]) -> None:
    print("| clients | req/s | p50 ms | p95 ms | p99 ms | tok/s | mean tokens | 429 | errors | lost |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['req_s']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
              f"| {r['tok_s']:.1f} | {r['mean_tokens']:.1f} | {r['http_429']} | {r['errors']} | {r['lost']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--queue", type=int, default=None, help="the server's --queue (default: its own, 4 x concurrency)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct-runtime comparison")
    ap.add_argument("--llamacpp", type=Path,
                    help="also load llama.cpp's server with this GGUF (same model) as the anchor")
    args = ap.parse_args()
    import httpx
    from serve_support import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", "from edgeft.cli import main; main()", "serve", str(args.bundle),
                               "--port", str(port), *(["--queue", str(args.queue)] if args.queue is not None else [])],
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(url + "/health")
        info = httpx.get(url + "/v1/models").json()["data"][0]
        health = httpx.get(url + "/health").json()
        texts = prompts(48)
        asyncio.run(level(url, info["id"], 1, 2, texts, args.max_tokens))  # warm-up
        rows = [asyncio.run(level(url, info["id"], int(c), args.requests, texts, args.max_tokens))
                for c in args.concurrency.split(",")]
    finally:
        server.terminate()
        server.wait(60)
    anchor = None
    if args.llamacpp:
        anchor = llamacpp_rows(args.llamacpp, int(info["threads"]), args, texts)
    d = None if args.no_direct else direct(args.bundle, texts[: max(args.requests, 8) + 1], args.max_tokens)
    overhead = rows[0]["p50_ms"] / d["p50_ms"] - 1 if d and rows and rows[0]["concurrency"] == 1 else None
    cmd = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    if args.markdown:
        print(f"Served `{info['id']}` ({info['format']} {info['precision']}, {info['threads']} threads, server "
              f"concurrency {health['concurrency']}, queue {health['queue']}); greedy chat, max_tokens "
              f"{args.max_tokens}, {args.requests} requests per level. Command: `{cmd}`. Machine: {machine}.\n")
        print_rows(rows)
        if anchor is not None:
            print(f"\nllama.cpp's server (`python -m llama_cpp.server`, llama-cpp-python {anchor['version']}, "
                  f"{anchor['threads']} threads) on `{args.llamacpp.name}`, same prompts and settings:\n")
            print_rows(anchor["rows"])
            ratios = [f"{r['concurrency']} client(s) {e['req_s'] / r['req_s']:.2f}x"
                      for e, r in zip(rows, anchor["rows"]) if r["req_s"] > 0]
            print(f"\nedgeft serve req/s vs llama.cpp's server: {', '.join(ratios)}.")
        if overhead is not None:
            print(f"\nDirect runtime (same engine, in process, one at a time): p50 {d['p50_ms']:.0f} ms; serving "
                  f"overhead at 1 client: {100 * overhead:+.1f}%.")
    else:
        import json

        print(json.dumps({"rows": rows, "direct": d, "overhead_c1": overhead, "model": info, "command": cmd,
                          "machine": machine, "llamacpp": anchor}, indent=2))


if __name__ == "__main__":
    main()
