"""Initial margins from the clean model (``amat calibrate --margins-out``, ``--adv-margin-init``).

The paper defines a sample's margin as the largest noise that does not harm it, but starts
every E(i) at Delta, so a margin needs many accepted visits to get where it belongs (about
2.5 visits per slice in a CPU-sized nnU-Net run). This file holds, per training sample, the
smallest L2 noise at which one of its training-loss terms crosses xi on the clean model (one
minimal-norm attack, :func:`amat_hooks.evaluation.radius.xi_radii`); a run started with it
begins each E(i) there, floored at Delta, and Algorithm 1 then runs unchanged.

The ids are the training sample ids as the trainer keys its margins (nnU-Net ``(case, slice)``,
``amat run`` the DataLoader index), so a file of another split or keying is refused at the
first batch (:meth:`amat_hooks.margins.MarginStore.get`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from amat_hooks.atomic_files import atomic_write_json, read_json

KIND = "amat-initial-margins"
VERSION = 1


class InitialMarginsError(ValueError):
    """An initial-margin file is missing, unreadable or not one."""


def _key(i: Any) -> Hashable:
    return tuple(_key(v) for v in i) if isinstance(i, list) else i


def digest(ids: Sequence[Hashable], values: Sequence[float]) -> str:
    """First 16 hex digits of the SHA-256 of ids and the exact bits of the values."""
    payload = json.dumps([[list(i) if isinstance(i, tuple) else i for i in ids], [float(v).hex() for v in values]],
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass
class InitialMargins:
    """A read file: the starting margin of each training sample (not-broken samples at the
    search's ``max_radius``), what it was measured on, and its digest (kept in the run's state,
    so a resume with another file is refused)."""

    path: Path
    task: str | None
    values: dict[Hashable, float]
    digest: str
    max_radius: float
    n_capped: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        v = sorted(self.values.values())
        med = v[len(v) // 2] if v else float("nan")
        return (f"initial margins from {self.path} ({len(v)} samples, median {med:.4g}, "
                f"{self.n_capped} not broken within {self.max_radius:g}; digest {self.digest})")


def initial_margins_record(task: str, ids: Sequence[Hashable], radii: Sequence[float | None], *,
                           max_radius: float, steps: int, xi: Sequence[float], rule: str,
                           term_names: Sequence[str], seconds: float, names: Sequence[str] | None = None,
                           identity: Mapping[str, Any] | None = None,
                           source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The file's record: ``radii[i]`` is sample i's radius, None where no noise within
    ``max_radius`` broke it (it then starts at ``max_radius``)."""
    if len(ids) != len(radii):
        raise InitialMarginsError(f"{len(ids)} ids but {len(radii)} radii")
    if len(set(ids)) != len(ids):
        raise InitialMarginsError("duplicate sample ids: each training sample must appear once")
    start = [float(max_radius) if r is None else float(r) for r in radii]
    return {
        "kind": KIND, "version": VERSION, "task": task,
        "what": "per training sample, the smallest L2 noise at which a training-loss term exceeds xi on the clean "
                "model (minimal-norm attack); None: not broken within max_radius",
        "ids": [list(i) if isinstance(i, tuple) else i for i in ids], "radii": list(radii),
        "names": list(names) if names is not None else None,
        "max_radius": float(max_radius), "steps": int(steps), "xi": [float(v) for v in xi], "rule": rule,
        "term_names": list(term_names), "n_samples": len(ids), "n_capped": sum(r is None for r in radii),
        "digest": digest(list(ids), start), "seconds": float(seconds),
        "identity": dict(identity or {}), "source": dict(source or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_initial_margins(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(record))


def read_initial_margins(path: str | os.PathLike) -> InitialMargins:
    """Read a file written by ``amat calibrate <task> --margins-out``; every problem is one line."""
    path = Path(path)
    fix = "write it with `amat calibrate <task> --margins-out FILE`"
    if not path.is_file():
        raise InitialMarginsError(f"no initial-margin file at {path}; {fix}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise InitialMarginsError(f"initial-margin file {path} is unreadable ({e}); {fix}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InitialMarginsError(f"{path} is not an initial-margin file (an xi file? pass that one as "
                                  f"--adv-xi-file); {fix}")
    ids = [_key(i) for i in data.get("ids") or []]
    radii = data.get("radii") or []
    mx = data.get("max_radius")
    if not ids or len(ids) != len(radii) or not isinstance(mx, (int, float)):
        raise InitialMarginsError(f"initial-margin file {path} is corrupt (ids, radii or max_radius); {fix}")
    values = [float(mx) if r is None else r for r in radii]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
        raise InitialMarginsError(f"initial-margin file {path} holds a negative or non-finite radius; {fix}")
    return InitialMargins(path=path, task=data.get("task"), values=dict(zip(ids, map(float, values))),
                          digest=digest(ids, values), max_radius=float(mx), n_capped=int(data.get("n_capped", 0)),
                          record=data)
