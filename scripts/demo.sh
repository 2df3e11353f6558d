#!/usr/bin/env bash
# The README's main command: install (idempotent), then run the main job on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
compressai-vlic demo "$@"
