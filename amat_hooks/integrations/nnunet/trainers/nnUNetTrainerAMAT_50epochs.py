from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerAMAT_50epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerAMAT for 50 epochs (like nnU-Net's own length variants)."""

    amat_mode = "amat"
    amat_epochs = 50
