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


def _ellipse(yy: Tensor, xx: Tensor, size: int, radius: tuple[float, float], g: torch.Generator) -> Tensor:
    """A random filled ellipse (bool mask), centre in the middle 60 % of the image."""
    cy, cx = (torch.rand(2, generator=g) * 0.6 + 0.2) * size
    ry, rx = (torch.rand(2, generator=g) * (radius[1] - radius[0]) + radius[0]) * size
    th = float(torch.rand(1, generator=g)) * math.pi
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def textured_segmentation(n: int, size: int = 32, seed: int = 0, noise: float = 0.05, texture: float = 0.1,
                          contrast: tuple[float, float] = (0.5, 1.5), objects: tuple[int, int] = (1, 2),
                          blobs: tuple[int, int] = (2, 4), radius: tuple[float, float] = (0.12, 0.25),
                          blob_sigma: tuple[float, float] = (0.06, 0.12)) -> tuple[Tensor, Tensor]:
    """The loop demo's data: ``n`` grey images ``[n, 1, size, size]`` (z-scored over the set)
    and labels ``[n, size, size]`` (1 = object). Seeded.

    Each image holds ``objects`` sharp-edged ellipses (label 1, brightness in ``contrast``)
    that carry a faint fine texture (a checkerboard of amplitude ``texture``), among
    ``blobs`` smooth Gaussian blobs of the same brightness range (label 0), plus white
    ``noise``. Two cues find the objects: brightness with sharp edges (strong, but blobs
    share the brightness) and the texture (perfectly predictive, but faint). A model trained
    on clean data leans on the faint texture, which a small L2 perturbation erases or paints
    on; adversarial training moves it to the strong cue, and very large training noise
    (which erases whole dim objects) costs clean accuracy.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    checker = ((yy + xx) % 2) * 2 - 1
    images = torch.zeros(n, 1, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)

    def count(r: tuple[int, int]) -> int:
        return int(torch.randint(r[0], r[1] + 1, (1,), generator=g))

    def bright() -> float:
        return contrast[0] + float(torch.rand(1, generator=g)) * (contrast[1] - contrast[0])

    for i in range(n):
        img = torch.zeros(size, size)
        for _ in range(count(blobs)):
            cy, cx = torch.rand(2, generator=g) * size
            c = bright()
            s = (blob_sigma[0] + (blob_sigma[1] - blob_sigma[0]) * float(torch.rand(1, generator=g))) * size
            img += c * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s ** 2))
        for _ in range(count(objects)):
            m = _ellipse(yy, xx, size, radius, g)
            labels[i][m] = 1
            img[m] += bright()
        img = img + texture * checker * labels[i] + noise * torch.randn(size, size, generator=g)
        images[i, 0] = img
    images = (images - images.mean()) / images.std()
    return images, labels
