"""The ``edgeft`` click group. Commands live one per module and are imported only when invoked,
so ``edgeft --help`` never imports torch, transformers or onnxruntime.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

COMMANDS = {
    "run": ("edgeft.cli.run", "run_cmd", "Run a recipe end to end (fine-tune ... package)."),
    "finetune": ("edgeft.cli.stages", "finetune_cmd", "Run a recipe's data + finetune stages."),
    "merge": ("edgeft.cli.merge", "merge_cmd", "Merge a PEFT adapter into its base (parity-checked)."),
    "export": ("edgeft.cli.export", "export_cmd", "Export an HF model folder to ONNX with KV cache."),
    "quantize": ("edgeft.cli.quantize", "quantize_cmd", "Quantize an ONNX artifact with a registered scheme."),
    "validate": ("edgeft.cli.stages", "validate_cmd", "Validate a recipe's artifacts against device profiles."),
    "package": ("edgeft.cli.stages", "package_cmd", "Package a recipe's validated artifacts as a release bundle."),
    "verify": ("edgeft.cli.verify", "verify_cmd", "Re-hash a release bundle (folder or .tar.gz)."),
    "serve": ("edgeft.cli.serve", "serve_cmd", "Serve a verified bundle over HTTP (OpenAI-compatible API, metrics)."),
    "monitor": ("edgeft.cli.monitor", "monitor_cmd", "Drift report and review file from a served bundle's request log."),
    "generate": ("edgeft.cli.generate", "generate_cmd", "Chat with an artifact (ONNX or HF folder)."),
    "devices": ("edgeft.cli.devices", "devices_grp", "List and show device profiles."),
    "recipes": ("edgeft.cli.recipes", "recipes_grp", "List, show and validate recipes; print their JSON Schema."),
    "data": ("edgeft.cli.data", "data_grp", "Data helpers: teacher-labelled examples (augment), active learning (select)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="edgeft", message="edgeft %(version)s")
def cli(verbose: int, quiet: bool) -> None:
    """edgeft: fine-tune, merge, export, quantize, validate and package models for edge devices."""
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 1 else logging.DEBUG)
    if not quiet and verbose == 0:
        level = logging.INFO
    from rich.console import Console
    from rich.logging import RichHandler

    # Log lines go to stderr: stdout carries what a command outputs (JSON of `data select`, a table), which
    # a library's warning at import time (torchao's on a CPU-only torch) must not corrupt.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)])
    logging.getLogger("edgeft").setLevel(level)
    if verbose < 2:  # library chatter (progress bars per dataset map, deprecation notes) hides edgeft's own lines
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        # bitsandbytes warns at import that an optional GPU-kernel package is missing; QLoRA works without it.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

        quiet_third_party_warnings()


#: Modules whose warnings stay visible: edgeft's own (``module`` is a regex matched from the start of the
#: name of the module a warning is attributed to).
_NOT_EDGEFT = r"(?!edgeft(\.|$))"


def quiet_third_party_warnings() -> None:
    """Hide the warnings libraries raise about their own internals, but none attributed to edgeft's code.

    A library that deprecates something edgeft calls warns with the caller's frame (stacklevel), so the
    warning is attributed to the edgeft module and still shows: the first sign that an API edgeft pins
    (or patches, see tests/finetune/test_library_patches.py) is moving. Library-internal chatter (a
    library warning about its own code or another library's) is noise a user cannot act on. Under
    pytest (CliRunner) the filters last one test, as pytest restores the filters after each.
    """
    import warnings

    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_NOT_EDGEFT)
    warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")  # torch.onnx tracer


def main() -> None:
    from edgeft.errors import EdgeftError

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except EdgeftError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; finished stages are kept, rerun to resume", err=True)
        sys.exit(130)
