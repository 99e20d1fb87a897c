from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerAMAT_100epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerAMAT for 100 epochs (like nnU-Net's own length variants)."""

    amat_mode = "amat"
    amat_epochs = 100
