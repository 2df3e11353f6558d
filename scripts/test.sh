#!/usr/bin/env bash
# The README's test command: install (idempotent), lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
