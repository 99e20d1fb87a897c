"""The batch object the nnU-Net trainers hand to the engine (no nnU-Net import here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from torch import Tensor


@dataclass
class NnUNetBatch:
    """One nnU-Net training batch, already on the trainer's device.

    ``data`` ``[B, C, H, W(, D)]`` (z-scored), ``target`` a tensor or the deep-supervision
    list, ``ids`` ``(case key, slice)`` per sample, ``bad`` ``[B]`` bool rows whose input
    was not finite (replaced by a finite row; their loss terms are reported as NaN so the
    core leaves their margins alone), ``clean_output`` the network output nnU-Net's own
    ``train_step`` already computed for ``data`` (reused for the clean loss).
    """

    data: Tensor
    target: Tensor | Sequence[Tensor]
    ids: Sequence[Hashable]
    bad: Tensor
    trainer: Any
    clean_output: Any = None
    extra: dict = field(default_factory=dict)
