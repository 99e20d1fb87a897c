"""The three per-sample loss terms of the Multi-Task U-Net, ``[B, 3]``:
heatmap (BCE as in the original code, or Dice as the AMAT paper prefers), masked L1 of the
x offsets, masked L1 of the y offsets.

Why per sample: AMAT tests every sample's terms against xi (eq. 2) and attacks every sample
with its own margin, so nothing may be averaged over the batch here. Averaged over the
batch, these are the terms the example script computes inline (tests check that).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TERM_NAMES = ("heatmap", "offset_x", "offset_y")
HEATMAP_LOSSES = ("bce", "dice")


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per sample: sum |pred - target| * mask / sum mask over (L, H, W) -> ``[B]``."""
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"offset prediction {tuple(pred.shape)}, target {tuple(target.shape)} and "
                         f"mask {tuple(mask.shape)} must have the same shape")
    b = pred.shape[0]
    num = ((pred - target).abs() * mask).reshape(b, -1).sum(1)
    return num / mask.reshape(b, -1).sum(1).clamp_min(1e-12)


def dice_loss(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Per sample: mean over landmark channels of 1 - (2 sum pt + s) / (sum p + sum t + s)."""
    if pred.shape != target.shape:
        raise ValueError(f"heatmap {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    p, t = pred.flatten(2), target.flatten(2)
    dice = (2 * (p * t).sum(2) + smooth) / (p.sum(2) + t.sum(2) + smooth)
    return (1 - dice).mean(1)


def bce_per_sample(pred: Tensor, target: Tensor,
                   criterion: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Per sample mean BCE. ``criterion``: the trainer's own ``nn.BCELoss`` (it is called
    unreduced, so its weight is kept) or None for ``F.binary_cross_entropy``."""
    if criterion is None:
        v = F.binary_cross_entropy(pred, target, reduction="none")
    else:
        import copy

        c = copy.copy(criterion)
        c.reduction = "none"
        v = c(pred, target)
    return v.reshape(v.shape[0], -1).mean(1)


def landmark_terms(outputs: tuple[Tensor, Tensor, Tensor], mask: Tensor, heatmap_target: Tensor,
                   offset_y: Tensor, offset_x: Tensor, heatmap_loss: str = "dice",
                   bce: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """``[B, 3]`` = (heatmap term, masked L1 x, masked L1 y) for model outputs
    ``(heatmap, offset_y, offset_x)``."""
    if heatmap_loss not in HEATMAP_LOSSES:
        raise ValueError(f"unknown heatmap loss {heatmap_loss!r}; choose one of {HEATMAP_LOSSES}")
    if not (isinstance(outputs, (tuple, list)) and len(outputs) == 3):
        raise ValueError("the Multi-Task U-Net must return (heatmap, offset_y, offset_x); got "
                         f"{type(outputs).__name__}")
    heatmap, reg_y, reg_x = outputs
    if heatmap_loss == "dice":
        h = dice_loss(heatmap, heatmap_target)
    else:
        h = bce_per_sample(heatmap, heatmap_target, bce)
    return torch.stack([h, masked_l1(reg_x, offset_x, mask), masked_l1(reg_y, offset_y, mask)], dim=1)
