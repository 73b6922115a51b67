#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit tests and the real-model integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
