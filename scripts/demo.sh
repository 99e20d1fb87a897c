#!/usr/bin/env bash
# Quick start, command 1: set up, then train STD/SAT/AMAT on generated data and print the table.
# Default back end: the plain PyTorch loop (~3-4 min on 2 CPU cores); extra arguments go to
# `amat demo` (e.g. --seed 1, --backend nnunet for nnUNetv2_train).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/amat demo "$@"
