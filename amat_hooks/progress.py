"""Built-in plugin: every host keeps the per-epoch policy summaries (``amat_epoch_end``),
so checkpoints and sidecars carry the margin mean/min/max and xi of every epoch and
reports can draw how the margins grew."""
from __future__ import annotations

from typing import Any

from amat_hooks.hookspecs import hookimpl


@hookimpl
def amat_epoch_end(epoch: int, summary: dict[str, float], host: Any) -> None:
    history = getattr(host, "amat_history", None)
    if isinstance(history, list):
        history.append({"epoch": int(epoch), **{k: float(v) for k, v in summary.items()}})
