"""ExecuTorch (.pte, XNNPACK) export of SmolLM2-135M vs the fp32 PyTorch model: export time and peak RAM,
file size, TTFT and decode tok/s at a fixed thread count, top-1 agreement and perplexity.

Usage (from the repository root; needs `pip install -e ".[executorch]"`)::

    flock /tmp/edgeft-heavy.lock python benchmarks/executorch_smollm2.py --preset executorch-8da4w \\
        --out /tmp/smollm2-8da4w --threads 2

``--model`` defaults to the embedded ``smollm2-135m`` base (a stand-in for a merged model of the same
size). The export runs in a child process so its peak RSS is its own. Quality: the export's own
check (held-out windows of tinyshakespeare when ``shared/data`` has it, else the export's sample ids).
Latency: :func:`edgeft.runtime.bench.measure` (fresh process per artifact, same prompt ids, exactly
``--new-tokens`` greedy tokens); with the default static layout the prompt (18 tokens) is one
right-padded ``prefill`` chunk, each new token one call of the one-token ``forward``. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The old lighthouse keeper climbed the narrow stairs one last time and looked out over the dark sea"
CHILD = """
import json, sys
from edgeft.exporters import export
from edgeft.runtime.bench import peak_rss_mb
a = json.loads(sys.argv[1])
r = export(a["model"], a["out"], preset=a["preset"], sample_ids=a["sample_ids"], quality_ids=a["windows"] or None)
r["export_peak_rss_mb"] = peak_rss_mb()
print(json.dumps(r))
"""


def heldout_windows(model_dir: str, seq: int = 256, n: int = 4) -> list[list[int]]:
    from transformers import AutoTokenizer

    text = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not text.is_file():
        text = Path("/work/shared/data/tinyshakespeare.txt")
    if not text.is_file():
        return []
    raw = text.read_text()
    ids = AutoTokenizer.from_pretrained(model_dir)(raw[int(len(raw) * 0.9):], add_special_tokens=False).input_ids
    return [ids[i * seq:(i + 1) * seq] for i in range(n) if len(ids) >= (i + 1) * seq]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF folder (default: resolve_model('smollm2-135m'))")
    p.add_argument("--preset", default="executorch-8da4w")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--windows", type=int, default=8, help="held-out windows of 256 tokens for the quality check")
    p.add_argument("--skip-export", action="store_true", help="measure an existing --out")
    a = p.parse_args()
    from transformers import AutoTokenizer

    from edgeft.runtime.bench import measure

    model = a.model
    if model is None:
        from edgeft.models.sources import resolve_model

        model = str(resolve_model("smollm2-135m").path)
    result: dict = {"model": model, "preset": a.preset, "threads": a.threads}
    if not a.skip_export:
        prompt = AutoTokenizer.from_pretrained(model)(PROMPT).input_ids
        args = json.dumps({"model": model, "out": a.out, "preset": a.preset, "windows": heldout_windows(model, n=a.windows),
                           "sample_ids": prompt})
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"export failed: {proc.stderr.strip().splitlines()[-3:]}")
        rep = json.loads(proc.stdout.strip().splitlines()[-1])
        result["export"] = {k: rep.get(k) for k in ("size_bytes", "export_seconds", "export_and_lower_seconds",
                                                  "export_peak_rss_mb", "embedding", "quantization", "group_size",
                                                  "max_cache_len", "shapes", "prefill_chunk", "top1_agreement",
                                                  "max_abs_diff", "quality")}
        result["export"]["quantized"] = rep["executorch"]["quantized"]
        result["export"]["wall_seconds"] = time.perf_counter() - t0
        result["export"]["xnnpack_partitions"] = rep["executorch"]["xnnpack_partitions"]
    prompt = AutoTokenizer.from_pretrained(model)(PROMPT).input_ids
    for name, path, fmt in (("pte", a.out, "pte"), ("pytorch-fp32", model, "pytorch")):
        m = measure(Path(path), fmt, a.threads, prompt, a.new_tokens, warmup=1, repeats=a.repeats)
        result[name] = {k: m.get(k) for k in ("ttft_ms_p50", "decode_tok_s", "per_token_ms_p50", "peak_rss_mb",
                                              "load_seconds", "threads", "threads_source")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
