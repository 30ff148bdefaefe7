#!/usr/bin/env bash
# Prepare, on a machine with network access, what benchmarks/device_check.sh needs on the GPU machine
# (which gets a copy of the working tree and cannot install from the network):
#   dist/                 the dcspass wheel built from this tree, and pure-Python wheels the tests and
#                         the evaluation import (hypothesis, pytest-timeout, torchattacks, ...)
#   data/cifar-10-subset/ 18,000 + 1,000 CIFAR-10 images (55.7 MiB; the full 150 MB set does not fit
#                         a 64 MiB transfer), cut from ./data/cifar-10-batches-bin (fetched if missing)
# Both folders are git-ignored: name them in the device call's carry list ("dist", "data/cifar-10-subset").
# Rebuild right before the device call: the wheel is a snapshot of the tree.
#
#   bash benchmarks/device_prepare.sh [PYTHON]      # PYTHON defaults to .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}

rm -rf dist
"$python" -m pip wheel --quiet --no-deps -w dist .
# Pure-Python wheels only (any Python 3, any platform), so they install on the GPU machine's Python.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --abi none \
    --platform any --python-version 3.10 -d dist/deps \
    hypothesis sortedcontainers attrs pytest-timeout torchattacks
"$python" -m dcspass data fetch cifar10
"$python" -m dcspass data subset cifar10
du -sh dist data/cifar-10-subset
echo "carry: [\"dist\", \"data/cifar-10-subset\"]"
