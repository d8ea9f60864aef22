#!/usr/bin/env bash
# Set up adasmooth on a fresh machine: Fashion-MNIST (Debian package), .venv, torch pinned by
# constraints.txt, and the package with its test extra. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${ADASMOOTH_DATA:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing. Install it with:  sudo apt-get install dataset-fashion-mnist" >&2
    echo "       (or set ADASMOOTH_DATA to a folder holding its idx files)" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# constraints.txt pins torch to the CPU build this project's machines carry; without it pip would
# fetch a multi-GB CUDA build. Users elsewhere can install the package with any torch>=2.3.
if ! .venv/bin/python -c "import torch, adasmooth, pyautoattack, pytest, xdist" >/dev/null 2>&1; then
  echo "setup: installing torch and adasmooth[test] into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, adasmooth; print("torch", torch.__version__, "adasmooth", adasmooth.__version__)'))"
