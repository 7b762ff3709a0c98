#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on a GPU machine without network or ../shared into the
# ignored folder .gpu_bundle/ (27 MB): the mini slice and a pytest wheel with its dependencies.
# Run it here, then take .gpu_bundle/ along with the checkout (e.g. the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MINI=${MINI:-../shared/data/cifar10-mini}
mkdir -p .gpu_bundle/cifar10-mini .gpu_bundle/wheels
cp -r "$MINI/cifar-10-batches-py" .gpu_bundle/cifar10-mini/
"$PYTHON" -m pip download -q --only-binary=:all: -d .gpu_bundle/wheels pytest exceptiongroup tomli  # the last two: pytest's needs on Python 3.10
du -sh .gpu_bundle
