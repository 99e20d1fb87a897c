from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSTD_100epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerSTD for 100 epochs (like nnU-Net's own length variants)."""

    amat_mode = "none"
    amat_epochs = 100
