#!/usr/bin/env bash
# The GPU check (issue 12), one command on a CUDA machine:
#   bash bench/gpu_check.sh
# It runs the GPU tests, 30 epochs at full CIFAR-10 size (the mini slice tiled to 50,000 images)
# eager, with --torch_compile and with CUDA graphs, and the seed recipe for 2 epochs; it prints
# one table and appends it to bench/RESULTS.md (bench/gpu_check.py does the work).
#
# The GPU machine has torch, torchvision, accelerate, safetensors, matplotlib, tensorboard and
# tqdm, but no wandb, no datasets, no network and no ../shared. So, beforehand, on a machine
# that has them, run `bash bench/gpu_bundle.sh`: it fills the ignored folder .gpu_bundle/ with a
# copy of the mini slice and a pytest wheel, to travel with the checkout. Without the bundle the
# check still runs, on synthetic data (--dataset fake) and without the GPU tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH=.
if ! "$PYTHON" -c "import pytest" 2>/dev/null && compgen -G ".gpu_bundle/wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --find-links .gpu_bundle/wheels pytest
fi
exec "$PYTHON" bench/gpu_check.py "$@"
