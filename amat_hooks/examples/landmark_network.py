"""Multi-Task U-Net (Yao et al. 2020) for the example script: VGG19 feature encoder
(torchvision architecture, random init - no downloads), U-Net decoder with skips, 1x1 head
giving per landmark a sigmoid heatmap and x/y offset maps.

The network is written once, in ``amat_hooks.zoo.multitask_unet``; this file
only gives it the original code's name and signature. That import is the network
definition and nothing else: no hooks, no patching, no adversarial training - running
``python -m amat_hooks.examples.landmark_train`` is an ordinary clean run, and ``amat run``
adds AMAT from outside.
"""
from amat_hooks.zoo.multitask_unet import MultiTaskUNet


class UNet_Pretrained(MultiTaskUNet):
    """Name and arguments of the original code (it loaded ImageNet weights; here: random
    init). ``forward`` returns ``(heatmap, regression_y, regression_x)``."""

    def __init__(self, n_channels, n_classes):
        super().__init__(num_landmarks=n_classes, in_channels=n_channels)
        self.n_classes = n_classes
