#!/usr/bin/env bash
# Quick start, command 2: set up, then run the whole test suite (real trainers on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q -rs --durations=15 "$@"
