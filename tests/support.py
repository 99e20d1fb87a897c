"""Helpers shared by test folders (importable from every test: tests/ is on sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def amat_cmd() -> list[str]:
    """The ``amat`` console script of this environment."""
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "amat_hooks.cli"]


def run(args, cwd, guard: Path | None = None, timeout=300, env: dict | None = None) -> subprocess.CompletedProcess:
    """A subprocess with captured text output; ``guard``: refuse and record network access;
    ``env``: variables added to this process's environment."""
    env = {**os.environ, **(env or {})}
    if guard is not None:
        env["AMAT_NETWORK_GUARD"] = str(guard)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
