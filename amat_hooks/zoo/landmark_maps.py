"""Training targets of the Multi-Task U-Net (Yao et al. 2020) and decoding them back to
landmarks by voting.

Per landmark at (lx, ly), over pixels (x, y) with distance d < R (the disk; R = 0.05 *
max(H, W) by default): mask = 1, heatmap = exp(-d^2 / (2 R^2)) (Gaussian inside the
disk, 0 outside), offset_x = (lx - x) / R, offset_y = (ly - y) / R (0 outside). A pixel
plus its offset times R is the landmark: that is what voting decodes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

R_RATIO = 0.05


def radius_for(height: int, width: int, ratio: float = R_RATIO) -> float:
    """Disk radius R in pixels: ``ratio * max(H, W)`` (10 px at 200x160)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not ratio > 0:
        raise ValueError(f"radius ratio must be > 0, got {ratio}")
    return ratio * max(height, width)


def check_landmarks(landmarks: Tensor, height: int, width: int, where: str = "") -> None:
    """Refuse landmarks outside ``[0, W) x [0, H)`` with a message naming them."""
    if landmarks.dim() != 2 or landmarks.shape[1] != 2:
        raise ValueError(f"landmarks must be [L, 2] (x, y) pixel coordinates{where}, "
                         f"got shape {tuple(landmarks.shape)}")
    x, y = landmarks[:, 0], landmarks[:, 1]
    bad = ~torch.isfinite(landmarks).all(1) | (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"landmark {k + 1}{where} at (x={float(x[k]):g}, y={float(y[k]):g}) lies outside the "
            f"{width}x{height} (WxH) image; check the coordinate order (x, y) and the image size")


def landmark_targets(landmarks: Tensor, height: int, width: int,
                     radius: float | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(mask, heatmap, offset_y, offset_x)``, each float ``[L, H, W]``.

    ``landmarks``: ``[L, 2]`` (x, y) in pixels of this ``height x width`` image.
    """
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    check_landmarks(landmarks, height, width)
    r = radius_for(height, width) if radius is None else float(radius)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"radius must be > 0, got {radius}")
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    dx = landmarks[:, 0].view(-1, 1, 1) - xs  # landmark - pixel
    dy = landmarks[:, 1].view(-1, 1, 1) - ys
    d2 = dx ** 2 + dy ** 2
    mask = (d2 < r * r).float()
    heatmap = torch.exp(-0.5 * d2 / (r * r)) * mask
    offset_x = dx / r * mask
    offset_y = dy / r * mask
    return mask, heatmap, offset_y, offset_x


# -- decoding ----------------------------------------------------------------------------
# Decoding by voting (Yao et al. 2020): per landmark the top pi*R^2 heatmap pixels each
# vote at pixel + offset * R; the cell with most votes wins. The result is the mean of the
# votes inside the winning cell (sub-pixel), vectorised over batch and landmarks.
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
