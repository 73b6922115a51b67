"""Quantize stage: registered schemes applied to an ONNX artifact, each checked against its input."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from edgeft.errors import ConfigError, ParityError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import dynamic_int8 as _dyn  # noqa: F401  (registers)
from edgeft.quantize.schemes import matmulnbits as _nbits  # noqa: F401  (registers)
from edgeft.quantize.schemes import static_int8 as _static  # noqa: F401  (registers)

log = logging.getLogger(__name__)

__all__ = ["SCHEMES", "Scheme", "quantize"]


def _onnx_size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and (f.suffix == ".onnx" or ".onnx_data" in f.name
                                                                        or f.name.endswith(".onnx.data")))


def quantize(in_dir: Path, out_dir: Path, scheme: str, options: dict | None = None,
             quality_ids: Sequence[Sequence[int]] | None = None, max_ppl_increase_pct: float = 100.0,
             threads: int = 2, calibration_ids: Sequence[Sequence[int]] | None = None) -> dict:
    """Quantize the ONNX model in ``in_dir`` into ``out_dir`` and report size and quality vs the input.

    Quality: perplexity of input and output on ``quality_ids`` (token windows of held-out text),
    top-1 agreement and KL of the output's logits vs the input's. The stage fails
    (:class:`ParityError`) when perplexity rises more than ``max_ppl_increase_pct`` percent — a
    sanity bound; release gates live in validate.
    """
    from edgeft.quantize import quality
    from edgeft.runtime.lm import OrtLM, find_onnx

    sch = SCHEMES.get(scheme, "quantize.scheme")
    options = dict(options or {})
    unknown = sorted(set(options) - set(sch.options))
    if unknown:
        raise ConfigError(f"quantize scheme {scheme}: unknown option(s) {', '.join(unknown)}; valid options: "
                          + ", ".join(f"{k} (default {v[0]!r}: {v[1]})" for k, v in sch.options.items()))
    if sch.needs_calibration and not calibration_ids:
        raise ConfigError(f"quantize scheme {scheme} needs calibration data (token windows of text disjoint from the "
                          "evaluation text): recipes draw it from the training split; on the CLI pass --calibration FILE")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    src = find_onnx(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in in_dir.iterdir():  # tokenizer, config, chat template travel with the artifact
        if f.is_file() and f.suffix not in (".onnx",) and "onnx_data" not in f.name and not f.name.endswith("report.json"):
            shutil.copy2(f, out_dir / f.name)
    t0 = time.perf_counter()
    if sch.needs_calibration:
        done = sch.apply(src, out_dir / "model.onnx", calibration=[list(map(int, w)) for w in calibration_ids],
                         **options)
    else:
        done = sch.apply(src, out_dir / "model.onnx", **options)
    seconds = time.perf_counter() - t0
    report = {"scheme": scheme, "precision": sch.precision, "int8_mode": sch.int8_mode, "options": done,
              "quantize_seconds": seconds, "input_size_bytes": _onnx_size(in_dir),
              "size_bytes": _onnx_size(out_dir)}
    report["size_ratio"] = report["size_bytes"] / max(report["input_size_bytes"], 1)
    if quality_ids:
        wins = [list(w) for w in quality_ids]
        import numpy as np

        wins = [np.asarray(w, np.int64) for w in wins]
        ref = OrtLM(in_dir, threads)
        cand = OrtLM(out_dir, threads)
        ref_logits = [ref.logits(w) for w in wins]
        ppl_in = quality.perplexity(ref, wins)
        ppl_out = quality.perplexity(cand, wins)
        report.update({"perplexity_input": ppl_in, "perplexity": ppl_out,
                       "perplexity_increase_pct": 100.0 * (ppl_out - ppl_in) / ppl_in,
                       "quality_tokens": int(sum(len(w) for w in wins)),
                       **quality.compare(ref_logits, cand, wins)})
        log.info("%s: size %.1f MB (%.2fx input), perplexity %.3f -> %.3f (%+.1f%%), top-1 agreement %.3f",
                 scheme, report["size_bytes"] / 2**20, report["size_ratio"], ppl_in, ppl_out,
                 report["perplexity_increase_pct"], report["top1_agreement"])
        if report["perplexity_increase_pct"] > max_ppl_increase_pct:
            raise ParityError(f"quantize {scheme}: perplexity {ppl_in:.3f} -> {ppl_out:.3f} "
                              f"(+{report['perplexity_increase_pct']:.1f}%) exceeds the stage tolerance of "
                              f"+{max_ppl_increase_pct:g}%; try another scheme or options")
    (out_dir / "quantize_report.json").write_text(json.dumps(report, indent=2))
    return report


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "quantize")
