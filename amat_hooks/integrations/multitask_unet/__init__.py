"""Multi-Task U-Net landmark detection (Yao et al. 2020), as used in the AMAT paper
(section 3.6): VGG19 encoder + U-Net decoder, per landmark a heatmap and x/y offset maps,
three loss terms, decoding by voting, the ISBI 2015 reader and a generated dataset.

Importing this package is light; torchvision is imported only by :mod:`.model`.
"""
from __future__ import annotations

from amat_hooks.integrations.multitask_unet.losses import TERM_NAMES, dice_loss, landmark_terms, masked_l1
from amat_hooks.zoo.landmark_maps import landmark_targets, radius_for
from amat_hooks.zoo.landmark_maps import voting

__all__ = ["TERM_NAMES", "dice_loss", "landmark_targets", "landmark_terms", "masked_l1",
           "radius_for", "voting"]
