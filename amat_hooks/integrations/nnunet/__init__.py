"""nnU-Net v2 integration: ``nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerAMAT``.

The trainers live in :mod:`.trainers` (one module, found by nnU-Net through the
``nnUNet_extTrainer`` folder list that the installed ``amat_hooks_nnunet.pth`` start-up
line extends); names that carry a setting (``nnUNetTrainerAMAT_step0p5``) follow
:mod:`.names`. ``from amat_hooks.integrations.nnunet import AMATTrainerMixin`` adds AMAT to
a trainer of one's own. This package must stay importable without nnU-Net: only the
trainer, loader and calibration modules import ``nnunetv2``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

#: The folder nnU-Net searches for ``-tr nnUNetTrainerAMAT`` etc.
TRAINER_FOLDER = Path(__file__).resolve().parent / "trainers"


def __getattr__(name: str) -> Any:
    """``AMATTrainerMixin`` and ``nnUNetTrainerAdversarial``, imported (with nnU-Net) on first use."""
    if name in ("AMATTrainerMixin", "nnUNetTrainerAdversarial"):
        from amat_hooks.integrations.nnunet import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
