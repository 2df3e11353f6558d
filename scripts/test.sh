#!/usr/bin/env bash
# The README's test command: lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
