"""Prompt-lookup speculative decoding in OrtLM vs the plain greedy loop, on the task's own eval prompts.

Usage (from the repository root, after the quickstart run)::

    OMP_NUM_THREADS=2 flock /tmp/edgeft-heavy.lock python benchmarks/lookup_decoding.py \\
        runs/quickstart/quantize/int4 --run runs/quickstart --lookahead 0,2,4,8 --rounds 3 \\
        [--train-drafts] [--llamacpp runs/anchors/q4_k_m/model-q4_k_m.gguf]

Every eval prompt of the run (chat-formatted with the recipe's system prompt, as validate does) is
decoded greedily to its stop token with each lookahead k (0 = the plain loop), the settings taking
turns prompt by prompt so load from elsewhere hits all alike, ``--rounds`` times (the first round
untimed). The tokens must be identical to k = 0's for every prompt (speculation under greedy is
lossless; the run stops otherwise). Reported per k: end-to-end latency per prompt (p50 and mean),
its ratio to k = 0, forward passes per generated token and the share of drafted tokens accepted.
With ``--llamacpp FILE.gguf`` the same prompt ids run through llama.cpp (its plain greedy loop) as
the anchor, on its own tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path, help="ONNX decoder folder (optimum or genai graph)")
    ap.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="run folder (recipe, eval split)")
    ap.add_argument("--lookahead", default="0,2,4,8")
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--llamacpp", type=Path, default=None)
    ap.add_argument("--train-drafts", action="store_true",
                    help="also draft from n-grams of the run's training answers (NgramDrafts) when the prompt and "
                         "output have no repeat")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    import yaml
    from transformers import AutoTokenizer

    from edgeft.data.templates import prompt_ids, stop_ids
    from edgeft.runtime.lm import OrtLM

    recipe = yaml.safe_load((a.run / "recipe.yaml").read_text())
    system = recipe["data"].get("system_prompt", "")
    tok = AutoTokenizer.from_pretrained(str(a.artifact))
    records = [json.loads(line) for line in (a.run / "data" / "eval.jsonl").read_text().splitlines() if line.strip()]
    prompts = [prompt_ids(tok, system, r["prompt"]) for r in records]
    eos = set(stop_ids(tok))
    ks = [int(k) for k in a.lookahead.split(",")]
    drafts = None
    if a.train_drafts:
        from edgeft.runtime.ortcore import NgramDrafts

        train = [json.loads(x) for x in (a.run / "data" / "train.jsonl").read_text().splitlines() if x.strip()]
        end = stop_ids(tok)[:1]  # the answer ends with the turn-end token
        drafts = NgramDrafts([tok(r["response"], add_special_tokens=False).input_ids + end for r in train])
        print(f"n-gram drafts from {len(train)} training answers ({len(drafts.next)} contexts)")
    lms = {k: OrtLM(a.artifact, a.threads, lookahead=k, lookup_ngram=a.ngram, drafts=drafts) for k in ks}
    runners = {f"k={k}": lms[k] for k in ks}
    if a.llamacpp:
        from edgeft.runtime.llamacpp import LlamaCppLM

        runners["llama.cpp"] = LlamaCppLM(a.llamacpp, a.threads)
    lat: dict[str, list[list[float]]] = {n: [[] for _ in prompts] for n in runners}
    stats = {k: {"passes": 0, "drafted": 0, "accepted": 0, "tokens": 0} for k in ks}
    outputs: dict[str, list] = {n: [None] * len(prompts) for n in runners}
    for r in range(a.rounds):
        for i, p in enumerate(prompts):
            names = list(runners)
            order = names[(i + r) % len(names):] + names[:(i + r) % len(names)]
            for n in order:
                lm = runners[n]
                t = time.perf_counter()
                toks = lm.generate([p], a.max_new_tokens, sorted(eos))[0]
                dt = time.perf_counter() - t
                if outputs[n][i] is None:
                    outputs[n][i] = toks
                elif outputs[n][i] != toks:
                    raise SystemExit(f"{n}: prompt {i} decoded differently in round {r}")
                if r > 0:
                    lat[n][i].append(dt)
                if r == a.rounds - 1 and n.startswith("k="):
                    k = int(n[2:])
                    for key in ("passes", "drafted", "accepted"):
                        stats[k][key] += lm.last_stats.get(key, 0)
                    stats[k]["tokens"] += len(toks)
    for k in ks[1:]:
        bad = [i for i, (x, y) in enumerate(zip(outputs[f"k={k}"], outputs[f"k={ks[0]}"])) if x != y]
        if bad:
            raise SystemExit(f"lookahead {k} changed the tokens of prompts {bad}: speculation must be lossless")
    per_prompt = {n: [statistics.median(v) for v in lat[n]] for n in runners}
    base = per_prompt[f"k={ks[0]}"]
    rows = []
    for n in runners:
        pp = per_prompt[n]
        row = {"runner": n, "p50_ms": 1e3 * statistics.median(pp), "mean_ms": 1e3 * statistics.mean(pp),
               "ratio_vs_plain": statistics.mean(pp) / statistics.mean(base),
               "tokens": sum(len(o) for o in outputs[n])}
        if n.startswith("k="):
            s = stats[int(n[2:])]
            gen = s["tokens"] - len(prompts)  # tokens after each prompt's first (the prefill's)
            row["passes_per_token"] = (s["passes"] / gen) if (gen and s["passes"]) else 1.0
            row["accept_rate"] = s["accepted"] / s["drafted"] if s["drafted"] else 0.0
        rows.append(row)
    print(f"{len(prompts)} eval prompts of {a.run}, max {a.max_new_tokens} new tokens to the stop token, "
          f"{a.threads} threads, {a.rounds - 1} timed rounds (median per prompt); artifact {a.artifact}")
    print(f"machine: {platform.machine()}, {platform.platform()}\n")
    print("| decoder | p50 ms / prompt | mean ms / prompt | × plain (mean) | passes / token | drafts accepted |"
          " tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = (f"{r['passes_per_token']:.2f} | {100 * r['accept_rate']:.0f}%" if "accept_rate" in r else "- | -")
        print(f"| {r['runner']} | {r['p50_ms']:.0f} | {r['mean_ms']:.0f} | {r['ratio_vs_plain']:.2f} | {extra} | "
              f"{r['tokens']} |")
    if a.llamacpp:
        same = sum(x == y for x, y in zip(outputs["llama.cpp"], outputs[f"k={ks[0]}"]))
        print(f"\nllama.cpp's tokens equal edgeft's on {same}/{len(prompts)} prompts (different quantization)")
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "prompts": len(prompts), "threads": a.threads,
                                     "artifact": str(a.artifact)}, indent=2))
    np.random.seed(0)


if __name__ == "__main__":
    main()
