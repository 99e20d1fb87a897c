#!/usr/bin/env bash
# Quick start, command 1: set up, then train STD/SAT/AMAT on generated data and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/amat demo "$@"
