"""nnU-Net v2 integration: ``nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerAMAT``.

The trainers live in :mod:`.trainers` (one subclass per file, found by nnU-Net through the
``nnUNet_extTrainer`` folder list that the installed ``amat_hooks_nnunet.pth`` start-up
line extends). This package must stay importable without nnU-Net: only the trainer,
loader and calibration modules import ``nnunetv2``.
"""
from __future__ import annotations

from pathlib import Path

#: The folder nnU-Net searches for ``-tr nnUNetTrainerAMAT`` etc.
TRAINER_FOLDER = Path(__file__).resolve().parent / "trainers"
