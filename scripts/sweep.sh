#!/usr/bin/env bash
# Quick-start command 1: set up the environment, then run the main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
RSJAX_WITH_TORCH=${RSJAX_WITH_TORCH:-0} bash scripts/setup.sh
exec .venv/bin/python experiments/sweep.py "$@"
