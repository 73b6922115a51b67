"""edgeft export MODEL --out DIR"""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--preset", default="onnx-kv", show_default=True,
              help="Export preset (export/*.yaml), e.g. onnx-kv, onnx-cls, torchscript, torchscript-mobile, "
                   "executorch-8da4w.")
@click.option("--tolerance", type=float, default=2e-3, show_default=True, help="Max |diff| per output.")
def export_cmd(model, out, preset, tolerance):
    """Export the HF causal-LM (or classifier) folder MODEL and check every output against PyTorch."""
    from edgeft.exporters import export

    rep = export(model, out, preset=preset, tolerance=tolerance)
    if rep.get("format") == "pte":  # ExecuTorch: parity (fp32) or agreement (quantized) vs PyTorch
        click.echo(f"{rep['kind']} {rep['quantization']}: max |logit diff| {rep['max_abs_diff']:.3g}, top-1 agreement "
                   f"{rep['top1_agreement']:.3f} vs fp32 PyTorch")
        if "quality" in rep:
            q = rep["quality"]
            click.echo(f"perplexity {q['perplexity']:.3f} vs fp32 {q['perplexity_reference']:.3f} "
                       f"({q['ppl_increase_pct']:+.1f}%)")
        click.echo(f"exported {out} ({rep['size_bytes'] / 2**20:.1f} MB, pte) in {rep['export_seconds']:.0f} s")
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
