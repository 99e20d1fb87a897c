from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSTD(nnUNetTrainerAdversarial):
    """Plain nnU-Net training that honours the same AMAT_EPOCHS/AMAT_ITERS budget (fair baseline, clean model for amat calibrate)."""

    amat_mode = "none"
