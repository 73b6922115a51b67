"""edgeft export MODEL --out DIR"""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--preset", default="onnx-kv", show_default=True,
              help="Export preset (export/*.yaml), e.g. onnx-kv, onnx-cls, torchscript, torchscript-mobile, "
                   "executorch-8da4w, litert-fp32, litert-int8-full.")
@click.option("--tolerance", type=float, default=2e-3, show_default=True, help="Max |diff| per output.")
@click.option("--calibration-texts", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Text file, one training text per line: calibration for a full-integer LiteRT preset "
                   "(litert-int8-full), or the importance matrix of a GGUF preset (gguf-q4_k_m).")
def export_cmd(model, out, preset, tolerance, calibration_texts):
    """Export the HF folder MODEL (causal LM or classifier) and check every output against PyTorch."""
    from pathlib import Path

    from edgeft.exporters import export

    kw = {}
    if calibration_texts is not None:
        from edgeft.config.loader import load_preset

        fmt = load_preset(preset).format
        if fmt not in ("tflite", "gguf"):
            raise click.UsageError(f"--calibration-texts applies to LiteRT presets (litert-int8-full) and GGUF "
                                   f"presets (gguf-q4_k_m), not {preset}")
        texts = [t for t in Path(calibration_texts).read_text().splitlines() if t.strip()]
        if fmt == "tflite":
            kw["calibration_texts"] = texts
        else:  # token windows of the text, as the quantize command's --calibration
            from transformers import AutoTokenizer

            from edgeft.metrics.lm import text_windows

            tok = AutoTokenizer.from_pretrained(model)
            kw["calibration_ids"] = text_windows(tok, "\n".join(texts), 128, 128, 2048)
    rep = export(model, out, preset=preset, tolerance=tolerance, **kw)
    if rep.get("format") == "pte":  # ExecuTorch: parity (fp32) or agreement (quantized) vs PyTorch
        click.echo(f"{rep['kind']} {rep['quantization']}: max |logit diff| {rep['max_abs_diff']:.3g}, top-1 agreement "
                   f"{rep['top1_agreement']:.3f} vs fp32 PyTorch")
        if "quality" in rep:
            q = rep["quality"]
            click.echo(f"perplexity {q['perplexity']:.3f} vs fp32 {q['perplexity_reference']:.3f} "
                       f"({q['ppl_increase_pct']:+.1f}%)")
        click.echo(f"exported {out} ({rep['size_bytes'] / 2**20:.1f} MB, pte) in {rep['export_seconds']:.0f} s")
        return
    if rep.get("format") == "tflite":
        vs = rep["vs_reference"]
        click.echo(f"exported {out} ({rep['size_bytes'] / 2**20:.1f} MB, tflite {rep['graph']['op_count']} ops, "
                   f"1 x {rep['seq']}); vs fp32 PyTorch on {vs['samples']} texts: "
                   + ", ".join(f"{k} {v:.4g}" for k, v in vs.items() if k != "samples"))
        return
    if "quality" in rep:  # genai / gguf: quantized while exporting, scored against the fp32 model
        q = rep["quality"]
        if "skipped" in q:
            click.echo(f"quality check skipped: {q['skipped']}")
        else:
            click.echo(f"perplexity {q['perplexity']:.3f} vs fp32 {q['perplexity_reference']:.3f} "
                       f"({q['ppl_increase_pct']:+.1f}%), top-1 agreement {q['top1_agreement']:.3f}, KL {q['kl']:.4f}")
        click.echo(f"exported {out} ({rep['size_bytes'] / 2**20:.1f} MB, {rep['format']})")
        return
    for c in rep["parity"]:
        if c["name"] == "logits":
            click.echo(f"{c['step']:>7} logits: max |diff| {c['max_abs_diff']:.3g} (tolerance {c['tolerance']:g})")
    click.echo(f"exported {out} ({rep['size_bytes'] / 2**20:.1f} MB), max |diff| {rep['max_abs_diff']:.3g} over "
               f"{len(rep['parity'])} outputs")
