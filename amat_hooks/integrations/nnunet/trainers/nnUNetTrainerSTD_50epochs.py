from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSTD_50epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerSTD for 50 epochs (like nnU-Net's own length variants)."""

    amat_mode = "none"
    amat_epochs = 50
