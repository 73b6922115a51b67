"""edgeft devices list|show"""

from __future__ import annotations

import click


@click.group("devices")
def devices_grp():
    """Device profiles (devices/*.yaml)."""


@devices_grp.command("list")
def list_cmd():
    """One line per profile: name, class, threads, memory budget, precisions."""
    from rich.console import Console
    from rich.table import Table

    from edgeft.config.loader import list_devices

    t = Table()
    for c in ("name", "class", "threads", "model RAM MiB", "GB/s", "precisions", "formats"):
        t.add_column(c, no_wrap=c in ("name", "class"))  # never truncate the name; long lists wrap
    for d in list_devices():
        t.add_row(d.name, d.class_, str(d.cpu.threads), str(d.memory.model_budget_mb), f"{d.memory.bandwidth_gbps:g}",
                  ", ".join(d.precisions), ", ".join(d.formats))
    Console(width=max(100, Console().width)).print(t)


@devices_grp.command("show")
@click.argument("name")
def show_cmd(name):
    """Print a profile with every field and its source."""
    import yaml

    from edgeft.config.loader import load_device

    d = load_device(name)
    click.echo(yaml.safe_dump(d.model_dump(by_alias=True, exclude_none=True), sort_keys=False, width=100))
