#!/usr/bin/env bash
# Prepare, on a machine with network access, what benchmarks/device_check.sh needs on the GPU machine
# (which gets a copy of the working tree and cannot install from the network):
#   dist/                 the dcspass wheel built from this tree, and pure-Python wheels the tests and
#                         the evaluation import (hypothesis, pytest-timeout, torchattacks, ...)
#   data/fashion-mnist/   the four Fashion-MNIST files, copied from the system copy
# Both folders are git-ignored: name them in the device call's carry list ("dist", "data/fashion-mnist").
# Rebuild right before the device call: the wheel is a snapshot of the tree.
#
#   bash benchmarks/device_prepare.sh [PYTHON]      # PYTHON defaults to .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
fashion=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}

rm -rf dist
"$python" -m pip wheel --quiet --no-deps -w dist .
# Pure-Python wheels only (any Python 3, any platform), so they install on the GPU machine's Python.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --abi none \
    --platform any --python-version 3.10 -d dist/deps \
    hypothesis sortedcontainers attrs pytest-timeout torchattacks
mkdir -p data/fashion-mnist
for part in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    cp "$fashion/$part.gz" data/fashion-mnist/
done
du -sh dist data/fashion-mnist
echo "carry: [\"dist\", \"data/fashion-mnist\"]"
