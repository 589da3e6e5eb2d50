#!/usr/bin/env bash
# Idempotent environment set-up used by the quick-start commands:
#   - a virtual environment in .venv with rsjax (editable) and its test extra (``python3 -m venv``
#     needs Debian's python3-venv: installed with apt-get when running as root, else the command
#     to run is printed);
#   - PyTorch (CPU, torch==2.13.0, within the ``[torch]`` extra's torch==2.13.*) for the
#     weight-conversion tests unless RSJAX_WITH_TORCH=0; with torch wanted, a failed install is an
#     error (set RSJAX_WITH_TORCH=0 to go on without it: the conversion tests are then skipped);
#   - Fashion-MNIST from Debian's package dataset-fashion-mnist when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "rsjax needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# A venv whose creation failed half-way (Debian without python3-venv: no ensurepip) has a
# python but no pip: it is made again.
venv_ok() { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }
if ! venv_ok; then
  if ! "$PY" -m venv --clear .venv; then
    pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "installing the venv module: apt-get install -y python3-venv python${pyver}-venv" >&2
      apt-get update -q >/dev/null
      apt-get install -y -q python3-venv "python${pyver}-venv" >/dev/null || \
        apt-get install -y -q python3-venv >/dev/null
      "$PY" -m venv --clear .venv
    else
      echo "could not create the virtual environment .venv with $PY -m venv." >&2
      echo "On Debian/Ubuntu install the venv module as root with" >&2
      echo "    apt-get install -y python3-venv python${pyver}-venv" >&2
      echo "(or set PYTHON=/path/to/a/python3.11+ that has venv and ensurepip)." >&2
      exit 1
    fi
  fi
fi
venv_ok || { echo ".venv has no working pip; remove .venv and run $0 again" >&2; exit 1; }

# pinned: the [torch] extra allows torch==2.13.*; an unpinned torch would pull a large CUDA build
TORCH_PIN='torch==2.13.0'
with_torch=${RSJAX_WITH_TORCH:-1}
stamp=.venv/.rsjax-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-torch${with_torch}"
if [ "$with_torch" != "0" ] && [ -f "$stamp" ] && \
   ! .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then
  rm -f "$stamp"  # torch wanted but gone: install again
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]'
  if [ "$with_torch" != "0" ]; then
    # CPU build, used only to read .pth checkpoints and as the conversion tests' reference.
    if ! .venv/bin/python -m pip install -q -e '.[torch]' "$TORCH_PIN"; then
      echo "error: PyTorch ($TORCH_PIN) could not be installed. The weight-conversion tests need it;" >&2
      echo "set RSJAX_WITH_TORCH=0 to set up (and test) without PyTorch: those tests are then skipped." >&2
      exit 1
    fi
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
