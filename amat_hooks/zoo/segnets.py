"""Small segmentation networks of the demo, the examples and the tests, and their two-term loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinySegNet(nn.Module):
    """A small encoder-decoder with BatchNorm (BN makes the 'attack must not touch
    running statistics' rule matter)."""

    def __init__(self, ch: int = 16, classes: int = 2) -> None:
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
        self.enc1, self.enc2 = block(1, ch), block(ch, 2 * ch)
        self.mid = block(2 * ch, 2 * ch)
        self.dec = block(3 * ch, ch)
        self.head = nn.Conv2d(ch, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.mid(self.enc2(F.max_pool2d(e1, 2)))
        up = F.interpolate(e2, scale_factor=2, mode="nearest")
        return self.head(self.dec(torch.cat([up, e1], 1)))


class SmallUNet(nn.Module):
    """A three-level U-Net (two 3x3 conv + BatchNorm + ReLU per block, ``ch``/2ch/4ch
    channels): the loop demo's model. Deeper than :class:`TinySegNet`, and like the paper's
    U-Nets its clean-trained version is fragile under small L2 noise."""

    def __init__(self, ch: int = 16, classes: int = 2) -> None:
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
        self.e1, self.e2, self.e3 = block(1, ch), block(ch, 2 * ch), block(2 * ch, 4 * ch)
        self.d2, self.d1 = block(6 * ch, 2 * ch), block(3 * ch, ch)
        self.head = nn.Conv2d(ch, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2, mode="nearest"), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2, mode="nearest"), e1], 1))
        return self.head(d1)


MODELS = {"unet": SmallUNet, "tiny": TinySegNet}


def seg_loss_terms(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample [B, 2] terms: cross-entropy and soft-Dice loss (1 - Dice)."""
    ce = F.cross_entropy(output, target, reduction="none").flatten(1).mean(1)
    p = output.softmax(1)[:, 1].flatten(1)
    t = (target == 1).float().flatten(1)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return torch.stack([ce, 1 - dice], 1)
