"""Quantize stage: registered schemes applied to an ONNX artifact, each checked against its input."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from edgeft import artifacts
from edgeft.artifacts import Artifact
from edgeft.config.schema import Goal
from edgeft.errors import ConfigError
from edgeft.metrics import gate
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import auto as _auto  # noqa: F401  (registers)
from edgeft.quantize.schemes import basegrid as _basegrid  # noqa: F401  (registers)
from edgeft.quantize.schemes import bnb as _bnb  # noqa: F401  (registers)
from edgeft.quantize.schemes import dynamic_int8 as _dyn  # noqa: F401  (registers)
from edgeft.quantize.schemes import gptq as _gptq  # noqa: F401  (registers)
from edgeft.quantize.schemes import gptqmodel as _gptqmodel  # noqa: F401  (registers)
from edgeft.quantize.schemes import lora_int4 as _lora_int4  # noqa: F401  (registers)
from edgeft.quantize.schemes import matmulnbits as _nbits  # noqa: F401  (registers)
from edgeft.quantize.schemes import static_int8 as _static  # noqa: F401  (registers)
from edgeft.quantize.schemes import torch_dynamic as _torch_dynamic  # noqa: F401  (registers)
from edgeft.quantize.schemes import torchao_int4 as _torchao_int4  # noqa: F401  (registers)

log = logging.getLogger(__name__)

__all__ = ["SCHEMES", "Scheme", "describe_output", "quantize", "scheme_options"]


def scheme_options(scheme: str, options=None, source: str = "quantize", path: str = "options",
                   origins: dict | None = None):
    """``options`` (a mapping, or already the model) validated by ``scheme``'s options model.

    Unknown scheme: ConfigError with did-you-mean and the valid names; a bad option: one line per
    problem naming ``source``, the key path under ``path`` and the valid options.
    """
    from edgeft.config.options import check_options

    sch = SCHEMES.get(scheme, "quantize.scheme")
    return check_options(sch.options_model, options, source, path, owner=f"scheme {scheme}", origins=origins)


def describe_output(out_dir: Path, scheme: str, opts, in_dir: Path, name: str | None = None) -> Artifact:
    """Write ``out_dir/artifact.json`` for ``scheme``'s output: the scheme's output format, precision and int8 mode,
    its resolved options, and the kind of the model in ``in_dir`` (``name`` defaults to the scheme's)."""
    sch = SCHEMES.get(scheme)
    return artifacts.write(out_dir, name=name or scheme, kind=artifacts.model_kind(in_dir), format=sch.output_format,
                           stage="quantize", producer=scheme, precision=sch.precision, int8_mode=sch.int8_mode,
                           options=opts)


def quantize(in_dir: Path, out_dir: Path, scheme: str, options: dict | None = None,
             quality_ids: Sequence[Sequence[int]] | None = None, max_ppl_increase_pct: float = 100.0,
             threads: int = 2, calibration_ids: Sequence[Sequence[int]] | None = None,
             labeled: Sequence[dict] | None = None, max_accuracy_drop: float = 0.05,
             adapter_dir: Path | None = None, name: str | None = None) -> dict:
    """Quantize the ONNX model in ``in_dir`` into ``out_dir`` and report size and quality vs the input.

    ``out_dir/artifact.json`` describes the result (:func:`describe_output`; ``name`` defaults to the scheme's).

    A scheme with ``input_format == "pytorch"`` reads an HF folder instead (the merged model) and
    writes ``output_format`` (an HF folder, or TorchScript); quality is then measured with the
    matching runtimes (``edgeft.runtime.lm.load_lm``: eager PyTorch for the input).

    A classifier is checked on ``labeled`` (``{"text", "label"}`` held-out records) instead of
    perplexity: accuracy of input and output, label agreement, logit differences
    (:func:`edgeft.metrics.classify.versus_input`); accuracy falling more than ``max_accuracy_drop``
    raises :class:`ParityError`.

    Quality: perplexity of input and output on ``quality_ids`` (token windows of held-out text),
    top-1 agreement and KL of the output's logits vs the input's (:mod:`edgeft.metrics.lm`). The stage fails
    (:class:`ParityError`) when perplexity rises more than ``max_ppl_increase_pct`` percent — a
    sanity bound; release gates live in validate. Both bounds are gates of :mod:`edgeft.metrics.gate`.
    """
    # Over 80 lines: the one path every scheme takes (checks, side files, apply, report, quality checks,
    # description), each step a few lines that read in order; split, the steps would pass a dozen values around.
    from edgeft.runtime.lm import find_onnx

    opts = scheme_options(scheme, options)
    sch = SCHEMES.get(scheme)
    if sch.needs_calibration and not calibration_ids:
        raise ConfigError(f"quantize scheme {scheme} needs calibration data (token windows of text disjoint from the "
                          "evaluation text): recipes draw it from the training split; on the CLI pass --calibration FILE")
    if sch.needs_adapter and (adapter_dir is None or not Path(adapter_dir).is_dir()):
        raise ConfigError(f"quantize scheme {scheme} needs the fine-tune's LoRA adapter folder (finetune/adapter): "
                          "recipes pass it when finetune.method is lora or qlora; on the CLI pass --adapter DIR")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if labeled and sch.input_format != "onnx":
        from edgeft.errors import UnsupportedError

        raise UnsupportedError(f"quantize scheme {scheme} reads a PyTorch model and is checked by perplexity on causal "
                               "LMs; for a classifier use an ONNX scheme (int8-dynamic, int8-static, int8-weight)")
    if sch.input_format == "pytorch":
        from edgeft.exporters.torchscript import copy_side_files

        if not (in_dir / "config.json").is_file():
            raise ConfigError(f"quantize scheme {scheme} reads an HF model folder (the merge stage's output) and "
                              f"{in_dir} has no config.json")
        src = in_dir
        copy_side_files(in_dir, out_dir)  # tokenizer, config, chat template; not the weights
    else:
        src = find_onnx(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in in_dir.iterdir() if sch.input_format == "onnx" else ():  # tokenizer, config, chat template
        if (f.is_file() and f.suffix != ".onnx" and "onnx_data" not in f.name and not f.name.endswith(".onnx.data")
                and not f.name.endswith("report.json") and f.name not in (artifacts.ARTIFACT_FILE, "stage.json")):
            shutil.copy2(f, out_dir / f.name)
    dest = out_dir / "model.onnx" if sch.input_format == "onnx" else out_dir
    t0 = time.perf_counter()
    extra = {"adapter": Path(adapter_dir)} if sch.needs_adapter else {}
    if sch.uses_adapter:
        extra["adapter"] = Path(adapter_dir) if adapter_dir is not None and Path(adapter_dir).is_dir() else None
    if sch.needs_calibration:
        extra["calibration"] = [list(map(int, w)) for w in calibration_ids]
    done = sch.apply(src, dest, opts=opts, **extra)
    seconds = time.perf_counter() - t0
    report = {"scheme": scheme, "precision": sch.precision, "int8_mode": sch.int8_mode, "options": done,
              "quantize_seconds": seconds, "input_size_bytes": artifacts.size_of(in_dir, sch.input_format),
              "size_bytes": artifacts.size_of(out_dir, sch.output_format), "input_format": sch.input_format,
              "output_format": sch.output_format}
    report["size_ratio"] = report["size_bytes"] / max(report["input_size_bytes"], 1)
    if quality_ids:
        report.update(_lm_quality(in_dir, out_dir, sch, quality_ids, threads))
        log.info("%s: size %.1f MB (%.2fx input), perplexity %.3f -> %.3f (%+.1f%%), top-1 agreement %.3f",
                 scheme, report["size_bytes"] / 2**20, report["size_ratio"], report["perplexity_input"],
                 report["perplexity"], report["perplexity_increase_pct"], report["top1_agreement"])
        _stage_gate(scheme, report, "perplexity", Goal.model_construct(percent_max_degradation=max_ppl_increase_pct))
    if labeled:
        report.update(_classifier_quality(in_dir, out_dir, labeled, threads))
        log.info("%s: size %.1f MB (%.2fx input), accuracy %.4f -> %.4f, label agreement %.4f", scheme,
                 report["size_bytes"] / 2**20, report["size_ratio"], report["accuracy_input"], report["accuracy"],
                 report["label_agreement"])
        _stage_gate(scheme, report, "accuracy", Goal.model_construct(max_degradation=max_accuracy_drop))
    if sch.on_quality is not None:
        sch.on_quality(report, out_dir)
    (out_dir / "quantize_report.json").write_text(json.dumps(report, indent=2))
    describe_output(out_dir, scheme, opts, in_dir, name)  # last: the artifact is complete
    return report


def _lm_quality(in_dir: Path, out_dir: Path, sch: Scheme, quality_ids, threads: int) -> dict:
    """Perplexity of input and output on the held-out windows, top-1 agreement and KL of the output vs the input."""
    import numpy as np

    from edgeft.metrics import lm
    from edgeft.runtime.lm import load_lm

    wins = [np.asarray(list(w), np.int64) for w in quality_ids]
    ref = load_lm(in_dir, sch.input_format, threads)
    cand = load_lm(out_dir, sch.output_format, threads)
    ref_logits = [ref.logits(w) for w in wins]
    ppl_in = lm.perplexity(ref, wins)
    ppl_out = lm.perplexity(cand, wins)
    return {"perplexity_input": ppl_in, "perplexity": ppl_out,
            "perplexity_increase_pct": 100.0 * (ppl_out - ppl_in) / ppl_in,
            "quality_tokens": int(sum(len(w) for w in wins)), **lm.compare(ref_logits, cand, wins)}


def _classifier_quality(in_dir: Path, out_dir: Path, records: Sequence[dict], threads: int,
                        max_length: int = 128) -> dict:
    """Accuracy / macro-F1 of the input and output ONNX classifiers on labelled ``records`` and their agreement."""
    from transformers import AutoTokenizer

    from edgeft.exporters.onnx_encoder import onnx_logits
    from edgeft.metrics.classify import gold_ids, label_index, versus_input

    tok = AutoTokenizer.from_pretrained(str(in_dir))
    index = label_index(in_dir)
    texts = [str(r["text"]) for r in records]
    ref = onnx_logits(in_dir, tok, texts, max_length=max_length, threads=threads)
    got = onnx_logits(out_dir, tok, texts, max_length=max_length, threads=threads)
    return versus_input(ref, got, gold_ids(records, index), len(index))


def _stage_gate(scheme: str, report: dict, metric: str, goal: Goal) -> None:
    """The stage's sanity bound on ``metric`` (output vs input): ParityError past it."""
    results = gate.quality_gates(scheme, report, {metric: report[f"{metric}_input"]}, {metric: goal},
                                 reference_name="input")
    gate.raise_failed(f"quantize {scheme}", results, "over the stage tolerance; try another scheme or options")


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "quantize")
