"""Trainer names that carry their setting, nnU-Net style: one ``-tr`` name per setting.

nnU-Net names a results folder after the trainer class (``<trainer>__<plans>__<config>``),
and ``nnUNetv2_predict``, ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_ensemble``
address models by that name. So two AMAT runs with different Delta must have two names, or
the second overwrites the first. The grammar::

    nnUNetTrainer{AMAT|SAT|STD}[_step<Delta> (AMAT) | _eps<eps> (SAT)][_<N>epochs | _1epoch]

Numbers are written with ``p`` for the decimal point (``0p5`` = 0.5, ``2p5`` = 2.5, ``5``),
in one spelling only (``0p50`` and ``05`` are refused with the right one), so one setting
has one folder. ``nnUNetTrainerAMAT_step0p5_50epochs``: AMAT, Delta 0.5, 50 epochs.

This module does not import nnU-Net; :mod:`.trainers.nnunet_trainers_amat_hooks` turns a
parsed name into a class when nnU-Net's lookup asks for it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from amat_hooks.config import AdvConfigError

#: The three families and the mode each trains.
BASES = {"AMAT": "amat", "SAT": "sat", "STD": "none"}
PREFIX = "nnUNetTrainer"
GRAMMAR = ("nnUNetTrainer{AMAT|SAT|STD}[_step<Delta> (AMAT only) | _eps<eps> (SAT only)][_<N>epochs | _1epoch], "
           "numbers with p for the point (0p5 = 0.5)")
_FAMILY = re.compile(rf"^{PREFIX}(AMAT|SAT|STD)(?:_(.*))?$")
_NUMBER = re.compile(r"^(\d+)(?:p(\d+))?$")
_EPOCHS = re.compile(r"^(\d+)epochs?$")


class TrainerNameError(AdvConfigError):
    """A ``-tr`` name of the amat-hooks family that does not follow the grammar."""


def number_token(value: float) -> str:
    """``0.5 -> "0p5"``, ``5.0 -> "5"``, ``2.25 -> "2p25"``: the one spelling of a number."""
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text.replace(".", "p")


def _number(token: str, what: str, name: str) -> float:
    m = _NUMBER.match(token)
    if not m:
        raise TrainerNameError(f"-tr {name}: {what} {token!r} is not a number written with p for the point "
                               f"(e.g. 0p5 for 0.5, 5 for 5); names follow {GRAMMAR}")
    value = float(f"{m.group(1)}.{m.group(2) or 0}")
    if value <= 0:
        raise TrainerNameError(f"-tr {name}: {what} must be > 0, got {token!r}")
    if number_token(value) != token:
        raise TrainerNameError(f"-tr {name}: write {what} {token!r} as {number_token(value)!r} (one spelling per "
                               f"setting, so one results folder): "
                               f"-tr {name.replace(token, number_token(value), 1)}")
    return value


@dataclass(frozen=True)
class TrainerSpec:
    """What a ``-tr`` name trains: ``mode`` (amat|sat|none), and the settings it fixes."""

    base: str                   # AMAT | SAT | STD
    step: float | None = None   # AMAT's Delta (AMAT_STEP)
    eps: float | None = None    # SAT's noise level (AMAT_EPS)
    epochs: int | None = None   # run length (AMAT_EPOCHS)

    @property
    def mode(self) -> str:
        return BASES[self.base]

    @property
    def name(self) -> str:
        return trainer_name(self.base, step=self.step, eps=self.eps, epochs=self.epochs)

    def describe(self) -> str:
        what = {"AMAT": "AMAT", "SAT": "SAT", "STD": "STD (clean nnU-Net training)"}[self.base]
        parts = [what]
        if self.step is not None:
            parts.append(f"Delta {self.step:g} (AMAT_STEP)")
        if self.eps is not None:
            parts.append(f"eps {self.eps:g} (AMAT_EPS)")
        if self.epochs is not None:
            parts.append(f"{self.epochs} epoch{'' if self.epochs == 1 else 's'} (AMAT_EPOCHS)")
        return ", ".join(parts)


def trainer_name(base: str, step: float | None = None, eps: float | None = None, epochs: int | None = None) -> str:
    """The canonical ``-tr`` name of a setting (``base``: AMAT, SAT or STD, or a mode)."""
    base = {"amat": "AMAT", "sat": "SAT", "none": "STD"}.get(base, base)
    name = PREFIX + base
    if step is not None:
        name += f"_step{number_token(step)}"
    if eps is not None:
        name += f"_eps{number_token(eps)}"
    if epochs is not None:
        name += f"_{epochs}epoch{'' if epochs == 1 else 's'}"
    return name


def parse_trainer_name(name: str) -> TrainerSpec | None:
    """The setting a name carries; None for a name outside the family (nnU-Net's own, a
    user's). A name of the family that breaks the grammar raises :class:`TrainerNameError`
    naming the right spelling."""
    m = _FAMILY.match(name)
    if not m:
        return None
    base, rest = m.group(1), m.group(2)
    if rest is None:
        return TrainerSpec(base)
    tokens = rest.split("_")
    step = eps = epochs = None
    if tokens and tokens[0].startswith("step") and base == "AMAT":
        step = _number(tokens.pop(0)[len("step"):], "Delta", name)
    elif tokens and tokens[0].startswith("eps") and base == "SAT":
        eps = _number(tokens.pop(0)[len("eps"):], "eps", name)
    if tokens:
        e = _EPOCHS.match(tokens[0])
        if e and int(e.group(1)) >= 1:
            epochs = int(e.group(1))
            tokens.pop(0)
    if tokens:
        hint = {"AMAT": "AMAT names carry _step<Delta>", "SAT": "SAT names carry _eps<eps>",
                "STD": "STD names carry only a length"}[base]
        raise TrainerNameError(f"-tr {name}: {'_'.join(tokens)!r} is not understood ({hint}); names follow "
                               f"{GRAMMAR}, e.g. nnUNetTrainerAMAT_step0p5, nnUNetTrainerSAT_eps5_50epochs")
    spec = TrainerSpec(base, step=step, eps=eps, epochs=epochs)
    if spec.name != name:  # e.g. _1epochs or _5epoch
        raise TrainerNameError(f"-tr {name}: spell it -tr {spec.name} (one spelling per setting, so one "
                               f"results folder)")
    return spec
