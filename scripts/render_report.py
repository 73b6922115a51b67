#!/usr/bin/env python3
"""Render a report.html to a PNG screenshot with headless Chromium.

Usage: python scripts/render_report.py REPORT_HTML OUT_PNG [--width 1400] [--height 2400]

The browser is $CHROMIUM, else /usr/bin/chromium, else the first of chromium, chromium-browser,
google-chrome on PATH (Debian: apt-get install chromium). It runs with a throw-away profile and
every background network feature off; the page itself is self-contained. Exits non-zero when no
browser is found, the browser fails, or no PNG comes out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env if (os.path.isfile(env) or shutil.which(env)) else None
    if os.path.isfile("/usr/bin/chromium") and os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(html_path: Path, out_png: Path, width: int = 1400, height: int = 2400, timeout: float = 180) -> Path:
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (set $CHROMIUM or apt-get install chromium)")
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if out_png.exists():
        out_png.unlink()
    with tempfile.TemporaryDirectory(prefix="edgeft-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out_png}",
               html_path.as_uri()]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              cwd=profile)
    if proc.returncode != 0 or not out_png.is_file() or out_png.stat().st_size == 0:
        raise RuntimeError(f"chromium failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return out_png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_html", type=Path)
    ap.add_argument("out_png", type=Path)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    try:
        out = render(args.report_html, args.out_png, args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"render_report: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
