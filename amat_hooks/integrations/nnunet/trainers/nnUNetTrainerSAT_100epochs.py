from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSAT_100epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerSAT for 100 epochs (like nnU-Net's own length variants)."""

    amat_mode = "sat"
    amat_epochs = 100
