from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerSAT(nnUNetTrainerAdversarial):
    """Standard adversarial training with one noise level for all samples (AMAT_EPS), same PGD as AMAT."""

    amat_mode = "sat"
