"""LiteRT (.tflite) causal-LM export of SmolLM2-135M vs the fp32 PyTorch model: export time, file size,
held-out perplexity rise and top-1 agreement, and TTFT / decode tok/s at a fixed thread count.

Usage (from the repository root; needs ``pip install -e ".[litert,litert-lm]"`` and ``../shared/data``)::

    flock /tmp/edgeft-heavy.lock python benchmarks/litert_lm_smollm2.py --preset litert-lm-int8 \\
        --out /tmp/smollm2-litert --threads 2

``--model`` defaults to the embedded ``smollm2-135m`` base (a stand-in for a merged model of the same size).
Quality: the export's own check on 4 x 256 tokens of tinyshakespeare's tail (held out of every recipe's
training text). Latency: :func:`edgeft.runtime.bench.measure` (a fresh process per artifact, the same prompt
ids, exactly ``--new-tokens`` greedy tokens) for the artifact and, as the anchor in the same run, the fp32
PyTorch model. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The old lighthouse keeper climbed the narrow stairs one last time and looked out over the dark sea"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="litert-lm-int8")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    from transformers import AutoTokenizer

    from edgeft.exporters import export
    from edgeft.models.sources import resolve_model
    from edgeft.runtime.bench import measure

    model = resolve_model(a.model).path
    tok = AutoTokenizer.from_pretrained(str(model))
    data = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not data.is_file():
        raise SystemExit(f"{data}: missing (the held-out text); put the shared data folder beside the repository")
    ids = tok(data.read_text()[-40000:]).input_ids
    windows = [ids[i * 256:(i + 1) * 256] for i in range(4)]
    t0 = time.perf_counter()
    rep = export(model, a.out, preset=a.preset, sample_ids=ids[2000:2032], quality_ids=windows)
    wall = time.perf_counter() - t0
    prompt = tok(PROMPT).input_ids
    runs = {name: measure(path, fmt, a.threads, prompt, a.new_tokens, warmup=1, repeats=a.repeats)
            for name, path, fmt in ((a.preset, a.out, "tflite"), ("pytorch-fp32", model, "pytorch"))}
    q = rep["quality"]
    keep = ("ttft_ms_p50", "decode_tok_s", "peak_rss_mb", "threads")
    print(json.dumps({
        "preset": a.preset, "model": a.model, "quantize": rep["quantize"], "export_seconds": round(wall, 1),
        "size_mb": round(rep["size_bytes"] / 1e6, 1), "perplexity": q["perplexity"],
        "perplexity_fp32": q["perplexity_reference"], "ppl_increase_pct": round(q["ppl_increase_pct"], 2),
        "top1_agreement": q["top1_agreement"], "kl": q.get("kl"),
        "latency": {k: {f: v.get(f) for f in keep} for k, v in runs.items()},
        "decode_ratio_vs_pytorch_fp32": runs[a.preset]["decode_tok_s"] / runs["pytorch-fp32"]["decode_tok_s"],
        "prompt_tokens": len(prompt), "new_tokens": a.new_tokens}, indent=1))


if __name__ == "__main__":
    main()
