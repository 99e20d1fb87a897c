"""Training targets of the Multi-Task U-Net (Yao et al. 2020).

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
