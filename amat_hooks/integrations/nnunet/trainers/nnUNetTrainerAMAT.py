from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerAMAT(nnUNetTrainerAdversarial):
    """AMAT (Algorithm 1): per-sample margins keyed by (case, slice), full-radius L2 PGD noise (AMAT_BOUNDARY=stop: stopped at the loss boundary xi). Settings: AMAT_* environment variables (docs/nnunet.md)."""

    amat_mode = "amat"
