"""edgeft data augment|select"""

from __future__ import annotations

import click

model_opt = click.option("--model", "model_spec", required=True, metavar="MODEL",
                         help="Embedded model name, HF folder (e.g. runs/<name>/merge) or .gguf file.")
field_opt = click.option("--field", default="prompt", show_default=True,
                         help="Column/key holding the input text (.jsonl/.csv/.tsv; a .txt file is one input per line).")
system_opt = click.option("--system-prompt", default="Parse the request into JSON.", show_default=True,
                          help="System message put before every input by the chat template.")
limit_opt = click.option("--limit", type=int, default=None, help="Use only the first N inputs.")


@click.group("data")
def data_grp():
    """Data helpers: label inputs with a teacher (augment), pick inputs worth labeling (select)."""


@data_grp.command("augment")
@model_opt
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False), required=True, help="Unlabeled inputs.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .jsonl (written atomically).")
@field_opt
@system_opt
@click.option("--max-new-tokens", type=int, default=48, show_default=True, help="Answer length cap.")
@limit_opt
def augment_cmd(model_spec, inputs, out, field, system_prompt, max_new_tokens, limit):
    """Label INPUTS with a teacher model (greedy); write reviewable examples with source=augment."""
    import json

    from edgeft.data.augment import augment

    res = augment(model_spec, inputs, out, system_prompt, field, max_new_tokens, limit)
    click.echo(json.dumps(res, indent=2))


@data_grp.command("select")
@model_opt
@click.option("--pool", type=click.Path(exists=True, dir_okay=False), required=True, help="Unlabeled pool.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .jsonl, most uncertain first.")
@click.option("--top-k", type=int, default=20, show_default=True, help="How many inputs to keep.")
@click.option("--strategy", type=click.Choice(["entropy", "margin"]), default="entropy", show_default=True)
@click.option("--scope", type=click.Choice(["next-token", "answer"]), default="next-token", show_default=True,
              help="Causal LMs: the first answer token, or every token of the greedy answer (classifiers: labels).")
@click.option("--no-template", is_flag=True, help="Score the raw text instead of the chat-formatted prompt.")
@field_opt
@system_opt
@limit_opt
def select_cmd(model_spec, pool, out, top_k, strategy, scope, no_template, field, system_prompt, limit):
    """Score POOL by model uncertainty and write the TOP-K inputs worth labeling, with their scores."""
    import json

    from edgeft.data.select import select

    res = select(model_spec, pool, out, top_k, strategy, scope, field, system_prompt, template=not no_template,
                 limit=limit)
    click.echo(json.dumps(res, indent=2))
