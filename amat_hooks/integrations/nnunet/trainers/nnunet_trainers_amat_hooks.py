"""Every ``-tr`` name amat-hooks gives nnU-Net, in the one module nnU-Net imports from this
folder (it finds a trainer by class name in any module of a ``nnUNet_extTrainer`` folder,
with ``hasattr(module, name)`` / ``getattr(module, name)``).

The three trainers and their length variants (``_1epoch``, ``_5epochs``, ``_10epochs``,
``_50epochs``, ``_100epochs``, like nnU-Net's own ``nnUNetTrainer_Xepochs.py``) are defined
here. Any other name of the grammar in :mod:`amat_hooks.integrations.nnunet.names` -
``nnUNetTrainerAMAT_step0p5``, ``nnUNetTrainerSAT_eps5_50epochs`` - is made on request by the
module's ``__getattr__`` (PEP 562), so nnU-Net's lookup, ``nnUNetv2_train`` and
``nnUNetv2_predict`` all find it, and each setting gets its own results folder.
"""
import sys

from amat_hooks.integrations.nnunet.names import TrainerNameError, TrainerSpec, parse_trainer_name
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


_BASE = {"AMAT": nnUNetTrainerAMAT, "SAT": nnUNetTrainerSAT, "STD": nnUNetTrainerSTD}
#: Length variants defined up front, named as nnU-Net names its own.
VARIANT_EPOCHS = (1, 5, 10, 50, 100)


def named_trainer(spec: TrainerSpec) -> type:
    """The class of a parsed name, made once per process (so pickling by name finds the same object)."""
    existing = globals().get(spec.name)
    if existing is not None:
        return existing
    cls = type(spec.name, (_BASE[spec.base],), {
        "amat_step": spec.step, "amat_eps": spec.eps, "amat_epochs": spec.epochs,
        "__module__": __name__, "__qualname__": spec.name, "__doc__": f"{spec.describe()} (by its name)."})
    globals()[spec.name] = cls
    return cls


for _base in _BASE:
    for _epochs in VARIANT_EPOCHS:
        named_trainer(TrainerSpec(_base, epochs=_epochs))
del _base, _epochs


def __getattr__(name: str) -> type:
    """nnU-Net's ``hasattr(module, "-tr name")``: a class for every name of the grammar."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        spec = parse_trainer_name(name)
    except TrainerNameError as e:  # ours, misspelt: say how to spell it (nnU-Net would say "not found")
        print(f"amat-hooks: error: {e}", file=sys.stderr, flush=True)
        raise
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return named_trainer(spec)
