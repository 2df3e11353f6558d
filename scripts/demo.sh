#!/usr/bin/env bash
# The demo: install (idempotent), then run the demo on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
compressai-vlic demo "$@"
