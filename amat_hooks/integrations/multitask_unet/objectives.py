"""Attack objectives aimed at the landmark metric (MRE: the distance of the voted location from
the true landmark), for ``amat eval landmark --attacks ...`` and its ``worst``.

The training loss (heatmap Dice/BCE + masked offset L1) stops tracking the predicted location
at larger noise: the heatmap can lose its Dice while voting still finds the landmark, and a
location far away costs the loss no more than one next door. These two push the location itself:

* ``heatmap``: per landmark, the heatmap logits inside the true landmark's disk (d < R, the
  training mask) pushed down and those far from it (d >= 2R) pushed up, the farther the more
  (weight proportional to the distance): voting's top pi R^2 pixels, and with them the vote,
  leave the landmark for far parts of the image.
* ``vote``: per landmark, the distance of the mean vote of the pixels voting selects (the top
  pi R^2 of the heatmap, chosen without gradient) from the true landmark, in units of R: the
  offsets of those pixels pushed so that their votes move away together (a vote-displacement
  surrogate of the voted location).

Both are per-sample terms ``[N]`` (the mean over landmarks, as MRE) for the core's one
:func:`amat_hooks.attacks.pgd`; the heatmap's logits are recovered from the model's sigmoid output.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: ``heatmap``: pixels at least this many disk radii from the true landmark count as far
FAR_RADII = 2.0


def heatmap_logits(heatmap: Tensor) -> Tensor:
    """``logit(heatmap)`` of a sigmoid output, finite where it saturated (float32: up to ~16.6)."""
    h = heatmap.float().clamp(min=1e-30, max=1.0 - 1e-7)
    return torch.log(h) - torch.log1p(-h)


def _distances(landmarks: Tensor, height: int, width: int) -> Tensor:
    """``[N, L, H, W]``: each pixel's distance from landmark (x, y) ``[N, L, 2]``."""
    lm = landmarks.float()
    ys = torch.arange(height, dtype=torch.float32, device=lm.device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32, device=lm.device).view(1, 1, 1, width)
    return ((xs - lm[..., 0, None, None]) ** 2 + (ys - lm[..., 1, None, None]) ** 2).sqrt()


def _check(outputs, landmarks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if not (isinstance(outputs, (tuple, list)) and len(outputs) == 3):
        raise ValueError("the Multi-Task U-Net must return (heatmap, offset_y, offset_x)")
    heat, oy, ox = outputs
    if heat.dim() != 4 or landmarks.shape != (heat.shape[0], heat.shape[1], 2):
        raise ValueError(f"landmarks must be [N, L, 2] for maps [N, L, H, W], got {tuple(landmarks.shape)} "
                         f"and {tuple(heat.shape)}")
    return heat, oy, ox


def heatmap_terms(outputs, landmarks: Tensor, radius: float, far_radii: float = FAR_RADII) -> Tensor:
    """``[N]``: mean over landmarks of (distance-weighted mean logit at d >= ``far_radii`` R) minus
    (mean logit inside the disk d < R)."""
    heat, _, _ = _check(outputs, landmarks)
    logit = heatmap_logits(heat)
    d = _distances(landmarks.to(heat.device), heat.shape[2], heat.shape[3])
    inside = (d < radius).float()
    far = d * (d >= far_radii * radius).float()
    far = far / far.sum((2, 3), keepdim=True).clamp_min(1e-12)
    down = (logit * inside).sum((2, 3)) / inside.sum((2, 3)).clamp_min(1.0)
    up = (logit * far).sum((2, 3))
    return (up - down).mean(1)


def vote_terms(outputs, landmarks: Tensor, radius: float) -> Tensor:
    """``[N]``: mean over landmarks of ``||mean vote - landmark|| / R``, the votes of the top
    ``pi R^2`` heatmap pixels (voting's selection, without gradient) at pixel + offset * R."""
    heat, oy, ox = _check(outputs, landmarks)
    n, l, h, w = heat.shape
    k = max(1, min(h * w, int(math.pi * radius * radius)))  # as zoo.landmark_maps.voting
    spots = heat.detach().reshape(n * l, -1).topk(k, dim=1).indices
    sy = torch.div(spots, w, rounding_mode="floor").float()
    sx = (spots % w).float()
    vx = (sx + ox.reshape(n * l, -1).gather(1, spots).float() * radius).mean(1)
    vy = (sy + oy.reshape(n * l, -1).gather(1, spots).float() * radius).mean(1)
    lm = landmarks.to(heat.device).float().reshape(n * l, 2)
    dist = ((vx - lm[:, 0]) ** 2 + (vy - lm[:, 1]) ** 2 + 1e-12).sqrt() / radius
    return dist.reshape(n, l).mean(1)


ABOUT = {
    "heatmap": "heatmap logits pushed down inside the true landmark's disk and up far from it (d >= 2R, "
               "weighted by distance)",
    "vote": "the mean vote of voting's top pi R^2 pixels moved away from the true landmark (their offsets)",
}
