from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSAT_50epochs(nnUNetTrainerAdversarial):
    """nnUNetTrainerSAT for 50 epochs (like nnU-Net's own length variants)."""

    amat_mode = "sat"
    amat_epochs = 50
