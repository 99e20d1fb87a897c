"""What a run leaves on disk: the one adversarial-state envelope and the one xi file.

**State envelope** (every host: the plain loop, ``amat run``, nnU-Net, Ultralytics, classic
YOLOv5). The same dict is a JSON sidecar (``amat_state.json``, ``CKPT.amat.json``) or the
``amat_hooks`` entry of a torch checkpoint (:data:`CHECKPOINT_KEY`)::

    {"format": "amat-hooks state", "version": 2, "host": "runner", "label": "AMAT",
     "config": {...AdvConfig...}, "epochs": 3,            # epochs finished
     "checkpoint": "weights/last.pt",                     # the weights these margins belong to
     "adapter": {...BatchAdapter.state()...}, "xi": [..K], "digest": "3f2a...",
     "summary": {...}, "history": [{epoch, margin_mean, ...}], "policy": {...Policy.state_dict()...},
     "host_state": {...}}                                 # what only that host needs

One writer (:func:`write_state`), one reader (:func:`read_state`, which refuses anything
else with the fix), one digest (:meth:`~amat_hooks.margins.MarginStore.digest`).

**xi file** (``kind: "amat-hooks xi"``, version 2), written by ``amat calibrate <task>``::

    {"kind": "amat-hooks xi", "version": 2, "task": "nnunet", "term_names": [..K], "rule": "mean",
     "xi": {"mean": [..K], "mean+2std": [..K]}, "stats": {"mean", "std", "min", "max"},
     "n_samples": N, "n_nonfinite": k, "identity": {...checked...}, "source": {...recorded...},
     "created": "2026-11-27T10:00:00+00:00"}
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from amat_hooks.atomic_files import atomic_write_json, read_json
from amat_hooks.thresholds import RULES, OnlineThreshold, xi_from_losses

STATE_FORMAT = "amat-hooks state"
STATE_VERSION = 2
#: Key of the adversarial state inside a torch checkpoint dict (nnU-Net, classic YOLOv5).
CHECKPOINT_KEY = "amat_hooks"
XI_KIND = "amat-hooks xi"
XI_VERSION = 2


class StateError(ValueError):
    """A state file or checkpoint entry is missing, unreadable or not an amat-hooks state."""


# -- the state envelope ---------------------------------------------------------------------------
def state_envelope(host: str, config: Any, policy: Any, adapter: Any = None, epochs: int = 0,
                   checkpoint: str | None = None, history: Sequence[Mapping[str, float]] = (),
                   host_state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The envelope of a host's adversarial state (see the module docstring)."""
    margins = getattr(policy, "margins", None)
    xi = policy.xi() if hasattr(policy, "xi") else None
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "host": host, "label": config.label,
            "config": config.to_dict(), "epochs": int(epochs), "checkpoint": checkpoint,
            "adapter": None if adapter is None else adapter.state(),
            "xi": None if xi is None else xi.tolist(),
            "digest": None if margins is None else margins.digest(),
            "summary": policy.summary(), "history": [dict(h) for h in history],
            "policy": policy.state_dict(), "host_state": dict(host_state or {})}


def write_state(path: str | os.PathLike, envelope: Mapping[str, Any]) -> Path:
    """A JSON sidecar, written atomically (a crash never leaves a truncated one)."""
    return atomic_write_json(path, dict(envelope))


def read_state(source: str | os.PathLike | Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """The envelope in a JSON sidecar, in a torch checkpoint's :data:`CHECKPOINT_KEY` entry,
    or in an already loaded dict; anything else is a :class:`StateError` saying what it is."""
    where = where or (str(source) if not isinstance(source, Mapping) else "the checkpoint")
    raw = source if isinstance(source, Mapping) else _load(Path(source))
    if isinstance(raw, Mapping) and CHECKPOINT_KEY in raw and "format" not in raw:
        raw = raw[CHECKPOINT_KEY]
    if not isinstance(raw, Mapping) or raw.get("format") != STATE_FORMAT:
        raise StateError(f"{where} holds no amat-hooks state (written by another program, or by an "
                         f"amat-hooks before 0.2: start a fresh run)")
    if raw.get("version") != STATE_VERSION:
        raise StateError(f"{where} is an amat-hooks state of version {raw.get('version')!r}; this amat-hooks "
                         f"reads version {STATE_VERSION}")
    for key, kind in (("policy", Mapping), ("config", Mapping), ("history", list)):
        if not isinstance(raw.get(key), kind):
            raise StateError(f"{where}: the state's {key!r} entry is missing or malformed (a damaged file); "
                             f"resume from another checkpoint or start a fresh run")
    return dict(raw)


def _load(path: Path) -> Any:
    if not path.is_file():
        raise StateError(f"no state file at {path}")
    try:
        if path.suffix == ".json":
            return read_json(path)
        # nnU-Net and YOLOv5 checkpoints hold pickled objects: weights_only=False, as they load them
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: say which and why
        raise StateError(f"{path} is unreadable ({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__})") from None


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
    delta: float | None = None

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
    """The report's view of the state in ``path`` (sidecar or checkpoint), or None if it holds none."""
    try:
        env = read_state(path)
    except StateError:
        return None
    policy = env["policy"]
    pcfg = dict(policy.get("config") or {})
    mode = pcfg.get("mode")
    margins = (policy.get("margins") or {}).get("values") if mode == "amat" else None
    xi = env.get("xi")
    if xi is None and mode == "amat" and isinstance(policy.get("online_xi"), dict):
        est = OnlineThreshold(rule=policy["online_xi"].get("rule", "mean"))
        est.load_state_dict(policy["online_xi"])
        xi = est.xi().tolist() if est.mean is not None else None
    return AdversarialState(
        path=Path(path), mode=mode, label=env.get("label"), margins=[float(v) for v in margins] if margins else None,
        xi=[float(v) for v in xi] if xi else None, xi_source=pcfg.get("xi_source"),
        boundary=pcfg.get("boundary") if mode == "amat" else None, policy_config=pcfg,
        history=list(env.get("history") or []), delta=pcfg.get("delta"))


# -- the xi file ----------------------------------------------------------------------------------
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
            raise XiFileError(f"xi file {self.path} has {len(values)} thresholds ({', '.join(self.term_names)}) "
                              f"but the loss has {n_terms} terms{hint}")
        return [float(v) for v in values]

    def check_task(self, task: str, term_names: Sequence[str] | None = None, fix: str = "") -> None:
        """Refuse a file calibrated for another kind of model (its task or its term names)."""
        hint = f"; {fix}" if fix else ""
        if self.task is not None and self.task != task:
            raise XiFileError(f"xi file {self.path} holds xi of a {self.task} model ({', '.join(self.term_names)}), "
                              f"not of {task}{hint}")
        if term_names is not None and self.term_names and list(self.term_names) != list(term_names):
            raise XiFileError(f"xi file {self.path} has the terms {', '.join(self.term_names)}, this loss has "
                              f"{', '.join(term_names)}{hint}")

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
    xi: dict[str, list[float] | None] = {}
    failed: dict[str, str] = {}
    for r in dict.fromkeys((rule, *RULES)):  # the chosen rule must work; the others are written where they do
        try:
            xi[r] = xi_from_losses(f, r).tolist()
        except ValueError as e:
            if r == rule:
                raise XiFileError(f"--rule {rule}: {e}; choose another statistic (e.g. --xi-stat mean+2std)") from None
            xi[r], failed[r] = None, str(e)
    return {
        "kind": XI_KIND, "version": XI_VERSION, "task": task, "term_names": list(term_names), "rule": rule,
        # a sample with a NaN term is left out whole; a statistic that cannot be computed is None
        "xi": xi, **({"not_computed": failed} if failed else {}),
        "stats": {"mean": f.mean(0).tolist(), "std": f.std(0, unbiased=False).tolist(),
                  "min": f.min(0).values.tolist(), "max": f.max(0).values.tolist()},
        "n_samples": int(t.shape[0]), "n_nonfinite": int((~finite).sum()),
        "identity": dict(identity or {}), "source": dict(source or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_xi_file(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(record))


def read_xi_file(path: str | os.PathLike, fix: str = "") -> XiFile:
    """Read an xi file written by ``amat calibrate`` (see the module docstring)."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if not path.is_file():
        raise XiFileError(f"no xi file at {path}{hint}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise XiFileError(f"xi file {path} is unreadable ({e}){hint}") from None
    if not isinstance(data, dict) or data.get("kind") != XI_KIND:
        raise XiFileError(f"{path} is not an xi file written by amat calibrate{hint}")
    return XiFile(path=path, task=data.get("task"), term_names=list(data.get("term_names") or []),
                  xi={k: None if v is None else list(v) for k, v in (data.get("xi") or {}).items()},
                  rule=data.get("rule"),
                  identity=dict(data.get("identity") or {}), source=dict(data.get("source") or {}))
