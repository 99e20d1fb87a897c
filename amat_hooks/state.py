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
from amat_hooks.policies import LEGACY_BOUNDARY
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


# -- adversarial state next to / inside a checkpoint (formerly sidecars.py) --------------

#: Key of the adversarial state inside an nnU-Net (or any torch) checkpoint dict.
CHECKPOINT_KEY = "amat_hooks"


@dataclass
class AdversarialState:
    """What a report needs from a trained model's adversarial state."""

    path: Path
    mode: str | None
    label: str | None
    margins: list[float] | None
    xi: list[float] | None
    xi_source: str | None
    boundary: str | None
    policy_config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def describe(self, name: str | None = None) -> str:
        """One line for a report header; ``name`` is what the report calls the model (the
        training label is added where it differs)."""
        label = self.label or self.mode or "?"
        who = label if name is None else (name if name == label else f"{name} (trained as {label})")
        if self.mode != "amat":
            return f"{who}: no margins"
        xi = "n/a" if not self.xi else "[" + ", ".join(f"{v:.4g}" for v in self.xi) + "]"
        n = len(self.margins or [])
        mean = sum(self.margins) / n if n else float("nan")
        return (f"{who}: {n} margins (mean {mean:.4g}), xi={xi} from "
                f"{self.xi_source or 'an unrecorded source'}, boundary={self.boundary}")


def read_adversarial_state(path: str | os.PathLike) -> AdversarialState | None:
    """The state in ``path`` (JSON sidecar or torch checkpoint), or None if it holds none."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = _load(path)
    if not isinstance(raw, dict):
        return None
    if "engine" not in raw and isinstance(raw.get(CHECKPOINT_KEY), dict):
        raw = raw[CHECKPOINT_KEY]
    engine = raw.get("engine")
    if not isinstance(engine, dict) or not isinstance(engine.get("policy"), dict):
        return None
    policy = engine["policy"]
    pcfg = dict(policy.get("config") or {})
    mode = pcfg.get("mode")
    margins = (policy.get("margins") or {}).get("values") if mode == "amat" else None
    xi = raw.get("xi")
    if xi is None and mode == "amat":
        xi = pcfg.get("xi") or _online_xi(policy.get("online_xi"))
    cfg = raw.get("config") or {}
    label = raw.get("label") or _label(pcfg, cfg)
    return AdversarialState(
        path=path, mode=mode, label=label, margins=[float(v) for v in margins] if margins else None,
        xi=[float(v) for v in xi] if xi else None,
        xi_source=pcfg.get("xi_source") or raw.get("xi_origin"),
        boundary=pcfg.get("boundary", LEGACY_BOUNDARY) if mode == "amat" else None,
        policy_config=pcfg, history=list(raw.get("history") or []))


def _load(path: Path) -> Any:
    if path.suffix == ".json":
        from amat_hooks.atomic_files import read_json

        try:
            return read_json(path)
        except (OSError, ValueError):
            return None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - not a checkpoint we can read: no state
        return None


def _online_xi(state: Any) -> list[float] | None:
    if not isinstance(state, dict) or state.get("mean") is None:
        return None
    from amat_hooks.thresholds import OnlineThreshold

    est = OnlineThreshold(rule=state.get("rule", "mean"))
    est.load_state_dict(state)
    return est.xi().tolist()


def _label(pcfg: dict, cfg: dict) -> str | None:
    mode = pcfg.get("mode")
    if mode == "none":
        return "STD"
    if mode == "sat":
        return f"SAT{pcfg.get('eps'):g}" if pcfg.get("eps") is not None else "SAT"
    if mode == "amat":
        return "AMAT" if pcfg.get("boundary", LEGACY_BOUNDARY) == "none" else "AMAT-stop"
    return None
