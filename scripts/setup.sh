#!/usr/bin/env bash
# Idempotent environment set-up used by the quick-start commands:
#   - a virtual environment in .venv with rsjax (editable) and its test extra;
#   - PyTorch (CPU) for the weight-conversion tests unless RSJAX_WITH_TORCH=0;
#   - Fashion-MNIST from Debian's package dataset-fashion-mnist when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "rsjax needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rsjax-installed
want="$(sha256sum pyproject.toml | cut -c1-16)-torch${RSJAX_WITH_TORCH:-1}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]'
  if [ "${RSJAX_WITH_TORCH:-1}" != "0" ]; then
    # CPU build, used only to read .pth checkpoints and as the conversion tests' reference.
    .venv/bin/python -m pip install -q 'torch==2.13.0' || \
      echo "warning: PyTorch could not be installed; the conversion tests will be skipped" >&2
  fi
  echo "$want" > "$stamp"
fi

FMNIST_DIR=${RSJAX_DATA_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist" >&2
    apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST not found in $FMNIST_DIR. Install it as root with" >&2
    echo "    apt-get install -y dataset-fashion-mnist" >&2
    echo "or point RSJAX_DATA_DIR at a directory holding the four IDX .gz files." >&2
    exit 1
  fi
fi
