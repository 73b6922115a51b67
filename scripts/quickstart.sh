#!/usr/bin/env bash
# Install (if needed), run the quickstart recipe end to end, and verify the release bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
edgeft run recipes/quickstart.yaml "$@"
edgeft verify runs/quickstart/package/quickstart-0.1.0.tar.gz
