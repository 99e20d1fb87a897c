"""Every ``-tr`` name amat-hooks gives nnU-Net, in the one module nnU-Net imports from this
folder (it finds a trainer by class name in any module of a ``nnUNet_extTrainer`` folder).

Like nnU-Net's own ``nnUNetTrainer_Xepochs.py``, the length variants share this file: each
overrides one idea (how many epochs) of the three trainers.
"""
from amat_hooks.integrations.nnunet.trainer import nnUNetTrainerAdversarial


class nnUNetTrainerAMAT(nnUNetTrainerAdversarial):
    """AMAT (Algorithm 1): per-sample margins keyed by (case, slice), full-radius L2 PGD noise
    (AMAT_BOUNDARY=stop: stopped at the loss boundary xi). Settings: AMAT_* variables (docs/nnunet.md)."""

    amat_mode = "amat"


class nnUNetTrainerSAT(nnUNetTrainerAdversarial):
    """Standard adversarial training with one noise level for all samples (AMAT_EPS), same PGD as AMAT."""

    amat_mode = "sat"


class nnUNetTrainerSTD(nnUNetTrainerAdversarial):
    """Plain nnU-Net training under the same AMAT_EPOCHS/AMAT_ITERS budget (the fair baseline, and
    the clean model `amat calibrate nnunet` reads)."""

    amat_mode = "none"


#: Length variants, named as nnU-Net names its own (``nnUNetTrainer_1epoch``, ``_5epochs`` ...).
VARIANT_EPOCHS = (1, 5, 10, 50, 100)


def _length_variant(base: type, epochs: int) -> type:
    name = f"{base.__name__}_{epochs}epoch{'' if epochs == 1 else 's'}"
    return type(name, (base,), {"amat_epochs": epochs, "__module__": __name__, "__qualname__": name,
                                "__doc__": f"{base.__name__} for {epochs} epoch{'' if epochs == 1 else 's'}."})


for _base in (nnUNetTrainerAMAT, nnUNetTrainerSAT, nnUNetTrainerSTD):
    for _epochs in VARIANT_EPOCHS:
        _cls = _length_variant(_base, _epochs)
        globals()[_cls.__name__] = _cls
del _base, _epochs, _cls
