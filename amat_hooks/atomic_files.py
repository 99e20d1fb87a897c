"""Atomic writes: a crash mid-save never leaves a truncated checkpoint or sidecar.

Files get the mode a plain ``open(path, "w")`` would give them (0666 minus the umask:
0644 under umask 0022), not ``mkstemp``'s private 0600, so colleagues on a shared
cluster can read checkpoints, xi files and reports as they read nnU-Net's own.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_with(path: str | os.PathLike, write) -> Path:
    """``write(file_object)`` into a temporary file beside ``path``, then rename over it
    (the patched ``torch.save`` of ``amat run`` saves the script's checkpoints this way)."""
    return _atomic(path, write)


#: the temporary files of :func:`_atomic` (``mkstemp``: ``.NAME.<8 random>.tmp``)
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted atomic write left in ``folder`` (a kill -9 mid-save): the
    temporary files of amat-hooks' own state files, and of any file that exists beside them
    (an interrupted overwrite). Called when a run starts, before anything writes there."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or not p.is_file():
            continue
        name = m.group("name")
        if name == "amat_state.json" or name.endswith(".amat.json") or (p.parent / name).exists():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
    """None if files can be written into ``folder`` (created where missing), else why not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".amat-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write into {folder} ({e.strerror})"
    return None


def _atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def current_umask() -> int:
    """The process umask. Linux reports it in ``/proc/self/status`` (read-only, so another
    thread creating a file meanwhile is not affected); elsewhere it is read by setting and
    restoring it, as there is no getter."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
