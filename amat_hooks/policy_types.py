"""What goes into and comes out of a policy (:mod:`amat_hooks.policies`): its PGD settings,
the output of one training step, the choices of its settings, and the error a state trained
with other settings raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from amat_hooks.attacks import DEFAULT_ALPHA, AttackResult

@dataclass
class StepOutput:
    """Result of one training step; ``loss`` is what the trainer back-propagates."""

    loss: Tensor
    clean_loss: Tensor
    clean_terms: Tensor
    noisy_loss: Tensor | None = None
    noisy_terms: Tensor | None = None
    attack: AttackResult | None = None
    eps: Tensor | None = None
    accepted: Tensor | None = None
    updated: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: Bisection steps for TRAINING noise of the boundary-stop variant (``--adv-boundary
#: stop``). The bracket around the boundary is one PGD step (alpha E / steps) wide; 2
#: halvings place the point within 1/4 of that, and each halving costs a forward pass
#: (docs/perf_yolo.md). ``attacks.pgd`` keeps 10 as its default.
TRAIN_REFINE_STEPS = 2

#: How AMAT's training noise ends. ``none``: Algorithm 1 as written (and the authors'
#: code) - full-radius PGD, every iteration. ``stop``: the opt-in variant that stops each
#: sample at its loss boundary xi and bisects there.
BOUNDARY_MODES = ("none", "stop")


class SemanticsMismatchError(ValueError):
    """A checkpoint's adversarial state was trained with other settings than this run's."""


@dataclass
class AttackSettings:
    """PGD settings used to make training noise."""

    steps: int = 10
    step_size: float | None = None
    norm: str = "l2"
    random_start: bool = True
    bounds: tuple[float, float] | None = None
    refine_steps: int = TRAIN_REFINE_STEPS
    alpha: float = DEFAULT_ALPHA
    #: ``ball`` (uniform in the ball) or ``sphere`` (the authors': radius max(E - Delta, Delta))
    start: str = "ball"
    #: ``frozen``: normalisation statistics restored after each attack; ``train``: the
    #: authors' code - every PGD forward in train mode updates BatchNorm's running statistics
    bn: str = "frozen"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"PGD steps must be an integer >= 1, got {self.steps!r} (--adv-steps)")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"PGD step size must be > 0, got {self.step_size!r} (--adv-step-size)")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"PGD alpha must be > 0, got {self.alpha!r} (--adv-alpha)")
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"unknown norm {self.norm!r}; use 'l2' or 'linf'")


MODES = ("none", "sat", "amat")
#: What SAT back-propagates: ``mean`` (paper eq. 1) or ``noisy`` (the authors' nnU-Net code)
SAT_LOSSES = ("mean", "noisy")
#: Which PGD iterates the acceptance test sees: ``last`` (Algorithm 1: the returned one) or
#: ``all`` (the authors' code: the start and every iterate; a sample passes only if all do)
ACCEPT_ITERATES = ("last", "all")
