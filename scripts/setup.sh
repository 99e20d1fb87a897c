#!/usr/bin/env bash
# Creates .venv in the project root and installs amat-hooks with every integration.
# Idempotent: a second run only checks. Works offline except for the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python >= 3.10 (set PYTHON=...)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.amat-setup-stamp
want="$(cat pyproject.toml setup.py 2>/dev/null | sha1sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import amat_hooks, torch' 2>/dev/null; then
  exit 0
fi
echo "setup: installing torch, nnunetv2, ultralytics and amat-hooks into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[all,test,bench]"
echo "$want" > "$stamp"
echo "setup: done"
