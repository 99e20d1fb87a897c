"""Decoding by voting (Yao et al. 2020): per landmark the top pi*R^2 heatmap pixels each
vote at pixel + offset * R; the cell with most votes wins. The result is the mean of the
votes inside the winning cell (sub-pixel), vectorised over batch and landmarks."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def voting(heatmap: Tensor, offset_y: Tensor, offset_x: Tensor, radius: float) -> Tensor:
    """Landmarks ``[B, L, 2]`` (x, y) in pixels from maps ``[B, L, H, W]``."""
    if not (heatmap.shape == offset_y.shape == offset_x.shape) or heatmap.dim() != 4:
        raise ValueError(f"heatmap and offset maps must all be [B, L, H, W], got "
                         f"{tuple(heatmap.shape)}, {tuple(offset_y.shape)}, {tuple(offset_x.shape)}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    b, l, h, w = heatmap.shape
    n = b * l
    k = max(1, min(h * w, int(math.pi * radius * radius)))
    hm = heatmap.detach().float().reshape(n, -1)
    _, spots = hm.topk(k, dim=1)                                   # [n, k]
    sy = torch.div(spots, w, rounding_mode="floor").float()
    sx = (spots % w).float()
    vx = sx + offset_x.detach().float().reshape(n, -1).gather(1, spots) * radius
    vy = sy + offset_y.detach().float().reshape(n, -1).gather(1, spots) * radius
    cx, cy = vx.round(), vy.round()
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h) & torch.isfinite(vx) & torch.isfinite(vy)
    cell = torch.where(inside, cy * w + cx, torch.zeros_like(cx)).long()
    counts = torch.zeros(n, h * w).scatter_add_(1, cell, inside.float())
    best = counts.argmax(1, keepdim=True)                          # [n, 1]
    inwin = inside & (cell == best)
    cnt = inwin.sum(1)
    bx = (best % w).squeeze(1).float()
    by = torch.div(best, w, rounding_mode="floor").squeeze(1).float()
    mx = torch.where(cnt > 0, (vx * inwin).sum(1) / cnt.clamp_min(1), bx)
    my = torch.where(cnt > 0, (vy * inwin).sum(1) / cnt.clamp_min(1), by)
    return torch.stack([mx, my], dim=1).reshape(b, l, 2)
