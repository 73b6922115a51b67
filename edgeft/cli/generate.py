"""edgeft generate ARTIFACT PROMPT"""

from __future__ import annotations

import click

from edgeft.cli.options import threads_opt


@click.command("generate")
@click.argument("artifact", type=click.Path(exists=True))
@click.argument("prompt")
@click.option("--system", "system_prompt", default="", help="System prompt (use the one the model was tuned with).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@threads_opt
def generate_cmd(artifact, prompt, system_prompt, max_new_tokens, threads):
    """Greedy chat completion of PROMPT with ARTIFACT (ONNX, GGUF, ExecuTorch .pte or HF folder)."""
    from edgeft.chat import generate

    click.echo(generate(artifact, prompt, system_prompt, max_new_tokens, threads))
