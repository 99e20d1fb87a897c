"""The Multi-Task U-Net of Yao et al. (2020): torchvision's VGG19 feature extractor as
encoder (randomly initialised: ``weights=None``, nothing is downloaded), a U-Net decoder
with skip connections from the five pooling stages, and a 1x1 head giving per landmark a
sigmoid heatmap channel and x / y offset channels.

``forward`` returns ``(heatmap, offset_y, offset_x)``, each ``[B, L, H, W]``, in the
order of the original public code (``heatmap, regression_y, regression_x``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Indices of the five MaxPool layers in torchvision's ``vgg19().features``.
_POOLS = (4, 9, 18, 27, 36)


class DoubleConv(nn.Module):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """Bilinear x2 upsampling, pad to the skip's size, concatenate, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class VGG19Features(nn.Module):
    """torchvision's VGG19 ``features`` (configuration "E", no BN), randomly initialised
    the way ``torchvision.models.vgg19(weights=None)`` does. The 120M-parameter classifier
    is left out: the U-Net never uses it, and Adam would carry its state for nothing."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers  # heavy import, only when built

        self.features = make_layers(cfgs["E"], batch_norm=False)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)


class MultiTaskUNet(nn.Module):
    """VGG19-encoder U-Net with heatmap + offset heads for ``num_landmarks`` landmarks.

    ``in_channels`` other than 3 replaces VGG's first convolution (grey images).
    """

    def __init__(self, num_landmarks: int = 19, in_channels: int = 3) -> None:
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.num_landmarks = num_landmarks
        self.vgg = VGG19Features(in_channels)
        self.up1 = Up(1024, 256)
        self.up2 = Up(512, 128)
        self.up3 = Up(256, 64)
        self.up4 = Up(128, 128)
        self.up5 = Up(128, 64)
        self.final = nn.Conv2d(64, num_landmarks * 3, kernel_size=1)

    def encode(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, layer in enumerate(self.vgg.features):  # type: ignore[arg-type]
            x = layer(x)
            if i in _POOLS:
                feats.append(x)
        return feats

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 4 or min(x.shape[-2:]) < 32:
            raise ValueError(f"MultiTaskUNet needs images [B, C, H, W] with H, W >= 32 (five 2x "
                             f"poolings), got {tuple(x.shape)}; resize the images (e.g. 64x48)")
        f = self.encode(x)
        y = self.up1(f[4], f[3])
        y = self.up2(y, f[2])
        y = self.up3(y, f[1])
        y = self.up4(y, f[0])
        y = self.up5(y)
        if y.shape[-2:] != x.shape[-2:]:  # odd sizes: pad back to the input size
            y = F.pad(y, [0, x.shape[3] - y.shape[3], 0, x.shape[2] - y.shape[2]])
        y = self.final(y)
        n = self.num_landmarks
        heatmap = torch.sigmoid(y[:, :n])
        offset_x = y[:, n:2 * n]
        offset_y = y[:, 2 * n:]
        return heatmap, offset_y, offset_x
