"""Multi-Task U-Net (Yao et al. 2020) for the example script: VGG19 feature encoder
(torchvision architecture, random init - no downloads), U-Net decoder with skips, 1x1 head
giving per landmark a sigmoid heatmap and x/y offset maps.

Plain PyTorch on purpose: this folder shows a researcher's own code, which amat-hooks
trains with AMAT from outside (`amat run`). Same layout/state_dict keys as
``amat_hooks.integrations.multitask_unet.model.MultiTaskUNet``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers

POOLS = (4, 9, 18, 27, 36)


class VGGFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make_layers(cfgs["E"], batch_norm=False)  # VGG19
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2=None):
        x1 = self.up(x1)
        if x2 is not None:
            dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
            x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x1 = torch.cat([x2, x1], dim=1)
        return self.conv(x1)


class UNet_Pretrained(nn.Module):
    """Name kept from the original code (it loaded ImageNet weights; here: random init)."""

    def __init__(self, n_channels, n_classes):
        super().__init__()
        assert n_channels == 3, "the VGG19 encoder takes RGB images"
        self.n_classes = n_classes
        self.vgg = VGGFeatures()
        self.up1 = Up(1024, 256)
        self.up2 = Up(512, 128)
        self.up3 = Up(256, 64)
        self.up4 = Up(128, 128)
        self.up5 = Up(128, 64)
        self.final = nn.Conv2d(64, n_classes * 3, kernel_size=1, padding=0)

    def forward(self, x):
        features = []
        h = x
        for i, layer in enumerate(self.vgg.features):
            h = layer(h)
            if i in POOLS:
                features.append(h)
        y = self.up1(features[4], features[3])
        y = self.up2(y, features[2])
        y = self.up3(y, features[1])
        y = self.up4(y, features[0])
        y = self.up5(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.pad(y, [0, x.shape[3] - y.shape[3], 0, x.shape[2] - y.shape[2]])
        y = self.final(y)
        heatmap = torch.sigmoid(y[:, :self.n_classes])
        regression_x = y[:, self.n_classes:2 * self.n_classes]
        regression_y = y[:, 2 * self.n_classes:]
        return heatmap, regression_y, regression_x
