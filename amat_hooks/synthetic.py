"""Data the project generates itself (demo, CI): no downloads, seeded, small."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def shapes_segmentation(n: int, size: int = 32, seed: int = 0, noise: float = 0.35) -> tuple[Tensor, Tensor]:
    """``n`` grey images ``[n, 1, size, size]`` (z-scored) with 1-2 bright ellipses and a
    dimmer distractor blob; labels ``[n, size, size]`` (1 = ellipse). Seeded."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    images = torch.zeros(n, 1, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        img = torch.zeros(size, size)
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * 0.6 + 0.2) * size
            ry, rx = (torch.rand(2, generator=g) * 0.12 + 0.08) * size
            th = float(torch.rand(1, generator=g)) * math.pi
            dy, dx = yy - cy, xx - cx
            u = dx * math.cos(th) + dy * math.sin(th)
            v = -dx * math.sin(th) + dy * math.cos(th)
            m = (u / rx) ** 2 + (v / ry) ** 2 <= 1
            labels[i][m] = 1
            img[m] = 1.0
        cy, cx = torch.rand(2, generator=g) * size
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.06 * size) ** 2))
        img = img + 0.5 * blob + noise * torch.randn(size, size, generator=g)
        images[i, 0] = img
    images = (images - images.mean()) / images.std()
    return images, labels
