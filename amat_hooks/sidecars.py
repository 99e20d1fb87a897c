"""One reader for the adversarial state a training run leaves next to (or inside) its
model: the runner's ``CKPT.amat.json`` / ``amat_state.json``, Ultralytics'
``weights/amat_state.json`` and the ``amat_hooks`` entry of an nnU-Net checkpoint.

All three hold ``{"engine": {"policy": {"config": {...}, "margins": {...}}}}`` as written
by :meth:`AdversarialEngine.state_dict`; this module only finds and opens them, so the
report code never needs to know which trainer wrote a file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amat_hooks.policies import LEGACY_BOUNDARY

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
