"""edgeft devices list|show|add|template"""

from __future__ import annotations

import click


@click.group("devices")
def devices_grp():
    """Device profiles (devices/*.yaml)."""


@devices_grp.command("list")
def list_cmd():
    """One line per profile: name, class, threads, memory budget, precisions (and user or shipped)."""
    from rich.console import Console
    from rich.table import Table

    from edgeft.config.loader import load_device
    from edgeft.config.resources import list_resources

    found = list_resources("devices")
    user = any(r.origin == "user" for r in found)  # say where each profile comes from once the user has some
    t = Table()
    columns = ("name", "class", "threads", "model RAM MiB", "GB/s", "precisions", "formats")
    for c in columns + (("from",) if user else ()):
        t.add_column(c, no_wrap=c in ("name", "class"))  # never truncate the name; long lists wrap
    for r in found:
        d = load_device(r.name)
        t.add_row(d.name, d.class_, str(d.cpu.threads), str(d.memory.model_budget_mb), f"{d.memory.bandwidth_gbps:g}",
                  ", ".join(d.precisions), ", ".join(d.formats), *([r.origin] if user else []))
    over = [r.name for r in found if r.overrides is not None]
    if over:
        t.caption = f"user profiles that override the shipped ones: {', '.join(over)} (edgeft devices show NAME)"
    Console(width=max(100, Console().width)).print(t)


@devices_grp.command("show")
@click.argument("name")
def show_cmd(name):
    """Print a profile with every field and its source, then the file it was read from."""
    import yaml

    from edgeft.config.loader import load_device
    from edgeft.config.resources import find_resource

    d = load_device(name)
    click.echo(yaml.safe_dump(d.model_dump(by_alias=True, exclude_none=True), sort_keys=False, width=100), nl=False)
    found = None if name.endswith((".yaml", ".yml")) or "/" in name else find_resource("devices", name)
    click.echo(f"# read from {found.describe() if found else name}")


@devices_grp.command("add")
@click.argument("name")
@click.option("--from", "from_", default="pi5", show_default=True, metavar="PROFILE",
              help="Existing profile (name or .yaml path) to copy.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write NAME.yaml into (default: the devices/ folder edgeft reads).")
def add_cmd(name, from_, out):
    """Start a new profile NAME as a copy of an existing one, then print what to edit."""
    from edgeft.config.profiles import add_profile, display_path

    new = add_profile(name, from_, out)
    shown, source = display_path(new.path), new.copied_from
    click.echo(f"wrote {shown} (a copy of {source}: every number in it is still {source}'s)")
    click.echo("next steps:")
    click.echo(f"  1. edit {shown}: cpu, memory, compute, formats, precisions, int8_modes, op_allowlist,")
    click.echo("     static_shapes, max_model_mb, onchip_param_mb and budgets (each field is explained in")
    click.echo("     `edgeft devices template` and docs/devices.md)")
    click.echo("  2. replace description and source: say what device it stands for, name the datasheet or")
    click.echo("     measurement behind every number and give the arithmetic for each estimate")
    click.echo(f"  3. check it: edgeft devices show {name if new.read_here else shown}")
    if new.read_here:
        click.echo(f"  4. use it: add {name} to validate.devices in a recipe, then run edgeft validate RECIPE")
        return
    click.echo(f"  4. use it: recipes name profiles found in the devices/ folder edgeft reads "
               f"({display_path(new.read_dir)}/, over the shipped ones);")
    click.echo(f"     move {new.path.name} there, then add {name} to validate.devices in a recipe")
    if new.path.parent.name == "devices":
        click.echo(f"     (or set EDGEFT_HOME={display_path(new.path.parent.parent)}: edgeft then reads the "
                   f"profiles in {display_path(new.path.parent)}/ over the shipped ones)")


@devices_grp.command("template")
def template_cmd():
    """Print a profile template documenting every field (from the schema's field descriptions)."""
    from edgeft.config.profile_template import profile_template

    click.echo(profile_template(), nl=False)
