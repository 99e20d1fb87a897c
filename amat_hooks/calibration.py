"""The one xi file: what ``amat calibrate <task>`` writes and every trainer reads.

Schema (``kind: "amat-hooks xi"``, version 2)::

    {"kind": "amat-hooks xi", "version": 2, "task": "nnunet",
     "term_names": ["loss"], "rule": "mean",                # the paper's rule for the task
     "xi": {"mean": [..K], "mean+2std": [..K]},             # both rules, one value per term
     "stats": {"mean": [..], "std": [..], "min": [..], "max": [..]},
     "n_samples": N, "n_nonfinite": k,
     "identity": {...},   # what the xi belongs to (dataset, configuration, plans ...): checked
     "source": {...},     # model, data, split that produced it: recorded
     "created": "2026-11-27T10:00:00+00:00"}

:func:`read_xi_file` also reads the three formats written before (nnU-Net's
``"amat-hooks nnunet xi"``, the YOLO and landmark ``{"xi": [...], "rule": ...}`` files) and
says so once, with the command that rewrites the file in the new format.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from amat_hooks.atomic_files import atomic_write_json, read_json
from amat_hooks.thresholds import RULES, xi_from_losses

XI_KIND = "amat-hooks xi"
XI_VERSION = 2
LEGACY_NNUNET_KIND = "amat-hooks nnunet xi"


class XiFileError(ValueError):
    """An xi file is missing, unreadable, for another run, or lacks the needed thresholds."""


@dataclass
class XiFile:
    """A read xi file: thresholds per rule, what they belong to and where they came from."""

    path: Path
    task: str | None
    term_names: list[str]
    xi: dict[str, list[float]]
    rule: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    format: str = XI_KIND

    def thresholds(self, rule: str | None = None, n_terms: int | None = None, fix: str = "") -> list[float]:
        """The K thresholds of ``rule`` (default: the file's own rule); every problem names
        the command ``fix`` that writes a good file."""
        rule = rule or self.rule or "mean"
        hint = f"; {fix}" if fix else ""
        values = self.xi.get(rule)
        if values is None:
            raise XiFileError(f"xi file {self.path} has no thresholds for rule {rule!r} (it has "
                              f"{sorted(self.xi)}){hint}")
        if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise XiFileError(f"xi file {self.path} holds invalid thresholds {values!r}{hint}")
        if n_terms is not None and len(values) != n_terms:
            raise XiFileError(f"xi file {self.path} has {len(values)} thresholds but the loss has {n_terms} "
                              f"terms{hint}")
        return [float(v) for v in values]

    def check_identity(self, expected: Mapping[str, Any], fix: str = "") -> None:
        """Refuse a file calibrated for another dataset/configuration (keys present in both)."""
        problems = [f"{k} {self.identity.get(k)!r} != {v!r}" for k, v in expected.items()
                    if k in self.identity and str(self.identity[k]) != str(v)]
        if problems:
            raise XiFileError(f"xi file {self.path} was calibrated for another run ({'; '.join(problems)})"
                              + (f"; run `{fix}`" if fix else ""))

    @property
    def description(self) -> str:
        return f"calibration file {self.path}"


def xi_record(task: str, terms: torch.Tensor, term_names: Sequence[str], rule: str,
              identity: Mapping[str, Any] | None = None, source: Mapping[str, Any] | None = None) -> dict:
    """The version-2 record for clean per-sample terms ``[N, K]`` (both rules computed)."""
    t = torch.as_tensor(terms, dtype=torch.float64)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.shape[0] == 0:
        raise XiFileError("no clean losses to calibrate from (the training split is empty)")
    if t.shape[1] != len(term_names):
        raise XiFileError(f"{t.shape[1]} loss terms but {len(term_names)} term names")
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.any()):
        raise XiFileError(f"every clean loss was NaN/inf ({t.shape[0]} samples); is the model trained?")
    f = t[finite]
    return {
        "kind": XI_KIND, "version": XI_VERSION, "task": task, "term_names": list(term_names), "rule": rule,
        "xi": {r: xi_from_losses(f, r).tolist() for r in RULES},  # a sample with a NaN term is left out whole
        "stats": {"mean": f.mean(0).tolist(), "std": f.std(0, unbiased=False).tolist(),
                  "min": f.min(0).values.tolist(), "max": f.max(0).values.tolist()},
        "n_samples": int(t.shape[0]), "n_nonfinite": int((~finite).sum()),
        "identity": dict(identity or {}), "source": dict(source or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_xi_file(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(record))


def read_xi_file(path: str | os.PathLike, fix: str = "") -> XiFile:
    """Read an xi file of any format amat-hooks wrote (see the module docstring)."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if not path.is_file():
        raise XiFileError(f"no xi file at {path}{hint}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise XiFileError(f"xi file {path} is unreadable ({e}){hint}") from None
    if not isinstance(data, dict):
        raise XiFileError(f"{path} is not an xi file written by amat calibrate{hint}")
    if data.get("kind") == XI_KIND:
        return XiFile(path=path, task=data.get("task"), term_names=list(data.get("term_names") or []),
                      xi={k: list(v) for k, v in (data.get("xi") or {}).items()}, rule=data.get("rule"),
                      identity=dict(data.get("identity") or {}), source=dict(data.get("source") or {}))
    if data.get("kind") == LEGACY_NNUNET_KIND:
        _legacy(path, "nnU-Net", fix)
        return XiFile(path=path, task="nnunet", term_names=list(data.get("term_names") or ["loss"]),
                      xi={k: list(v) for k, v in (data.get("xi") or {}).items()}, rule="mean",
                      identity={k: data.get(k) for k in ("dataset", "configuration", "plans")},
                      source={k: data.get(k) for k in ("fold", "trainer", "checkpoint")},
                      format=LEGACY_NNUNET_KIND)
    if isinstance(data.get("xi"), list) and isinstance(data.get("rule"), str):
        if "terms" in data:  # YOLO: {"xi", "rule", "terms": [box, cls, dfl], "model", "data", "split"}
            _legacy(path, "YOLO", fix)
            return XiFile(path=path, task="yolo", term_names=list(data["terms"]),
                          xi={data["rule"]: list(data["xi"])}, rule=data["rule"],
                          source={k: data.get(k) for k in ("model", "data", "split")}, format="yolo (1)")
        _legacy(path, "landmark", fix)  # {"xi", "rule", "term_names", "heatmap_loss", "checkpoint"}
        return XiFile(path=path, task="landmark", term_names=list(data.get("term_names") or []),
                      xi={data["rule"]: list(data["xi"])}, rule=data["rule"],
                      identity={"heatmap_loss": data["heatmap_loss"]} if data.get("heatmap_loss") else {},
                      source={k: data.get(k) for k in ("checkpoint", "annotation")}, format="landmark (1)")
    raise XiFileError(f"{path} is not an xi file written by amat calibrate{hint}")


def _legacy(path: Path, what: str, fix: str) -> None:
    warnings.warn(f"{path} is an xi file in the older {what} format; it is read as it is"
                  + (f" ({fix} rewrites it in the current one)" if fix else ""), UserWarning, stacklevel=3)
