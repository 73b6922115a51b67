"""edgeft verify BUNDLE"""

from __future__ import annotations

import click


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True))
def verify_cmd(bundle):
    """Re-hash every file of BUNDLE (folder or .tar.gz) against its manifest; exit 8 on any difference."""
    from edgeft.release import verify

    res = verify(bundle)
    click.echo(f"OK {res.bundle}: {res.n_files} files, {res.total_bytes / 2**20:.1f} MB match the manifest")
