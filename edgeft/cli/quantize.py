"""edgeft quantize ONNX_DIR --out DIR --scheme NAME"""

from __future__ import annotations

import click


def _parse_opts(opts):
    import yaml

    from edgeft.errors import ConfigError

    out = {}
    for o in opts:
        if "=" not in o:
            raise ConfigError(f"--opt {o!r}: expected KEY=VALUE, e.g. --opt block_size=32")
        k, v = o.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


@click.command("quantize")
@click.argument("onnx_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--scheme", required=True,
              help="A registered scheme, e.g. int8-weight, int8-dynamic, int4-rtn, int4-hqq, int4-lora (ONNX input); "
                   "bnb-nf4, bnb-int8, torch-dynamic-int8, gptqmodel (PyTorch input: pass the merged HF folder)")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Scheme option (repeatable), checked against the scheme's options before any work "
                   "(edgeft recipes schema lists them).")
@click.option("--text", type=click.Path(exists=True, dir_okay=False), help="Held-out text for the quality check.")
@click.option("--max-tokens", type=int, default=2048, show_default=True, help="Tokens of --text to score.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="Calibration text for static/GPTQ schemes (keep it disjoint from --text).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="The fine-tune's LoRA adapter folder (finetune/adapter), for int4-lora and int4-basegrid.")
def quantize_cmd(onnx_dir, out, scheme, opts, text, max_tokens, calibration, adapter):
    """Quantize ONNX_DIR with SCHEME; report size and perplexity/agreement vs the input.

    PyTorch-input schemes (bnb-*, torch-dynamic-int8, gptqmodel) take the merged HF model folder
    instead of an ONNX export."""
    from edgeft.quantize import quantize, scheme_options

    options = scheme_options(scheme, _parse_opts(opts), source="--opt", path="")  # typos fail before any work
    wins = calib = None
    if text or calibration:
        from pathlib import Path

        from transformers import AutoTokenizer

        from edgeft.metrics.lm import text_windows

        tok = AutoTokenizer.from_pretrained(onnx_dir)
        if text:
            wins = text_windows(tok, Path(text).read_text(), 256, 256, max_tokens)
        if calibration:
            calib = text_windows(tok, Path(calibration).read_text(), 128, 128, 2048)
    rep = quantize(onnx_dir, out, scheme, options, quality_ids=wins, calibration_ids=calib, adapter_dir=adapter)
    line = f"{scheme}: {rep['size_bytes'] / 2**20:.1f} MB ({rep['size_ratio']:.2f}x input)"
    if "perplexity" in rep:
        line += (f", perplexity {rep['perplexity_input']:.3f} -> {rep['perplexity']:.3f} "
                 f"({rep['perplexity_increase_pct']:+.1f}%), top-1 agreement {rep['top1_agreement']:.3f}")
    click.echo(line)
