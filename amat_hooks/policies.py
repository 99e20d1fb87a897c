"""STD, SAT and AMAT behind one interface (Algorithm 1 lines 2-12, section 2.3).

A trainer's adapter hands the policy a :class:`BoundLoss` for the current batch; the
policy runs the clean forward, the attack, the noisy forward, returns the loss to
back-propagate and (AMAT) updates the margins. Nothing here knows a trainer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

from .attacks import AttackResult, pgd
from .margins import MarginStore
from .thresholds import OnlineThreshold, accepted, check_xi

TermsFn = Callable[[Tensor], Tensor]
TrainingFn = Callable[[Tensor], "tuple[Tensor, Tensor]"]


@dataclass
class BoundLoss:
    """A batch's loss, bound to its targets by the adapter.

    ``terms(x)`` -> per-sample loss terms ``[B, K]`` (the attack objective; must not issue
    collective calls). ``training(x)`` -> ``(trainer's own scalar loss, terms [B, K])``
    from ONE forward pass; if omitted, the training loss is ``terms.sum(1).mean()``.
    """

    terms: TermsFn
    training: TrainingFn | None = None
    term_names: Sequence[str] | None = None

    def training_loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training is not None:
            loss, terms = self.training(x)
        else:
            terms = self.terms(x)
            loss = terms.reshape(terms.shape[0], -1).sum(1).mean()
        if terms.dim() == 1:
            terms = terms.unsqueeze(1)
        return loss, terms


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


#: Bisection steps for TRAINING noise. The bracket around the boundary is one PGD step
#: (2.5 E / steps) wide; 2 halvings place the point within 1/4 of that (6 % of E with 10
#: steps), and each halving costs a forward pass: measured AMAT/SAT time 1.32 with 10,
#: 1.12 with 3, 0.93 with 2 (docs/perf_yolo.md). ``attacks.pgd`` keeps 10 as its default.
TRAIN_REFINE_STEPS = 2


@dataclass
class AttackSettings:
    """PGD settings used to make training noise."""

    steps: int = 10
    step_size: float | None = None
    norm: str = "l2"
    random_start: bool = True
    bounds: tuple[float, float] | None = None
    refine_steps: int = TRAIN_REFINE_STEPS

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"PGD steps must be an integer >= 1, got {self.steps!r} (--adv-steps)")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"PGD step size must be > 0, got {self.step_size!r} (--adv-step-size)")
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"unknown norm {self.norm!r}; use 'l2' or 'linf'")


class Policy:
    """Common interface: ``step`` for trainers that own the loss, ``perturb`` +
    ``observe`` for those that only see batches (the monkeypatch runner)."""

    name = "base"

    def __init__(self, attack: AttackSettings | None = None) -> None:
        self.attack = attack or AttackSettings()
        self.nan_samples = 0

    # -- pieces -------------------------------------------------------------------------
    def eps_for(self, ids: Sequence[Hashable] | None, x: Tensor) -> Tensor | None:
        """Per-sample noise radius for this batch, or None (no attack)."""
        return None

    def boundary(self) -> Tensor | None:
        return None

    def perturb(self, model: nn.Module | None, x: Tensor, ids: Sequence[Hashable] | None,
                terms_fn: TermsFn) -> AttackResult | None:
        eps = self.eps_for(ids, x)
        if eps is None:
            return None
        a = self.attack
        return pgd(terms_fn, x, eps, steps=a.steps, step_size=None if a.step_size is None else a.step_size,
                   norm=a.norm, random_start=a.random_start, bounds=a.bounds,
                   boundary=self.boundary(), refine_steps=a.refine_steps, model=model)

    def observe_clean(self, clean_terms: Tensor) -> None:
        """Clean per-sample terms of a batch (AMAT's online xi)."""

    def observe(self, ids: Sequence[Hashable] | None, noisy_terms: Tensor,
                attack: AttackResult, clean_terms: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """After the noisy forward: returns (accepted [B], updated [B]) where relevant."""
        return None, None

    # -- one training step ----------------------------------------------------------------
    def step(self, model: nn.Module | None, x: Tensor, ids: Sequence[Hashable] | None,
             loss: BoundLoss) -> StepOutput:
        clean_loss, clean_terms = loss.training_loss(x)
        clean_terms_d = clean_terms.detach()
        self.observe_clean(clean_terms_d)
        attack = self.perturb(model, x, ids, loss.terms)
        if attack is None:
            return StepOutput(loss=clean_loss, clean_loss=clean_loss, clean_terms=clean_terms_d)
        noisy_loss, noisy_terms = loss.training_loss(attack.x_adv)
        noisy_terms_d = noisy_terms.detach()
        acc, upd = self.observe(ids, noisy_terms_d, attack, clean_terms_d)
        return StepOutput(loss=(clean_loss + noisy_loss) / 2, clean_loss=clean_loss,
                          clean_terms=clean_terms_d, noisy_loss=noisy_loss,
                          noisy_terms=noisy_terms_d, attack=attack, eps=self.last_eps,
                          accepted=acc, updated=upd)

    last_eps: Tensor | None = None

    # -- persistence / logging --------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        a = self.attack
        return {"mode": self.name, "steps": a.steps, "step_size": a.step_size, "norm": a.norm,
                "random_start": a.random_start, "bounds": a.bounds, "refine_steps": a.refine_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config(), "nan_samples": self.nan_samples}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        saved = state.get("config", {}).get("mode")
        if saved is not None and saved != self.name and not force:
            raise ValueError(f"checkpoint was trained with --adv {saved}, this run uses --adv {self.name}; "
                             f"resume with the same mode")
        self.nan_samples = int(state.get("nan_samples", 0))

    def summary(self) -> dict[str, float]:
        return {"nan_samples": float(self.nan_samples)}


class STD(Policy):
    """Standard training: clean loss only."""

    name = "none"


class SAT(Policy):
    """Standard adversarial training: one fixed eps for every sample, eq. (1)."""

    name = "sat"

    def __init__(self, eps: float, attack: AttackSettings | None = None) -> None:
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"SAT needs a noise level eps > 0, got {eps!r}; pass e.g. --adv-eps 5")
        super().__init__(attack)
        self.eps = float(eps)

    def eps_for(self, ids, x):
        self.last_eps = torch.full((x.shape[0],), self.eps, device=x.device)
        return self.last_eps

    def config(self):
        return {**super().config(), "eps": self.eps}


class AMAT(Policy):
    """Adaptive-margin adversarial training (Algorithm 1, multi-term condition eq. 2).

    ``xi``: thresholds ``[K]`` from a clean model (``amat calibrate``), or None to estimate
    them online from the clean losses with ``xi_rule``.
    """

    name = "amat"

    def __init__(self, step: float, xi: Sequence[float] | Tensor | None = None, xi_rule: str = "mean",
                 attack: AttackSettings | None = None, max_margin: float | None = None,
                 init: float | None = None, dataset_id: str | None = None,
                 xi_momentum: float | None = 0.01) -> None:
        if not (isinstance(step, (int, float)) and step > 0):
            raise ValueError(f"AMAT needs a step size Delta > 0, got {step!r}; pass e.g. --adv-step 0.5")
        super().__init__(attack)
        self.step_size_delta = float(step)
        self.margins = MarginStore(init=float(step if init is None else init), step=float(step),
                                   max_margin=max_margin, dataset_id=dataset_id)
        self.xi_fixed = None if xi is None else check_xi(xi)
        self.online = None if xi is not None else OnlineThreshold(rule=xi_rule, momentum=xi_momentum)
        self.xi_rule = xi_rule

    def xi(self) -> Tensor | None:
        if self.xi_fixed is not None:
            return self.xi_fixed
        return self.online.xi() if self.online is not None and self.online.ready else None

    def boundary(self):
        return self.xi()

    def eps_for(self, ids, x):
        if ids is None:
            raise ValueError("AMAT needs sample ids for every batch (one margin per sample); "
                             "the adapter returned none - give the dataset an id per sample")
        if len(ids) != x.shape[0]:
            raise ValueError(f"got {len(ids)} sample ids for a batch of {x.shape[0]} inputs")
        self.last_eps = self.margins.get(ids, device=x.device)
        return self.last_eps

    def observe_clean(self, clean_terms):
        if self.online is not None:
            self.online.update(clean_terms)

    def observe(self, ids, noisy_terms, attack, clean_terms=None):
        xi = self.xi()
        if xi is None:
            raise RuntimeError("AMAT has no threshold xi yet (no clean losses observed)")
        nt = noisy_terms if noisy_terms.dim() == 2 else noisy_terms.unsqueeze(1)
        if xi.numel() != nt.shape[1]:
            raise ValueError(f"xi has {xi.numel()} thresholds but the loss has {nt.shape[1]} terms "
                             f"per sample; recalibrate xi for this loss (amat calibrate)")
        acc = accepted(nt, xi.to(nt.device)).cpu()
        valid = torch.isfinite(nt).all(dim=1).cpu() & attack.finite.cpu()
        if clean_terms is not None:
            valid &= torch.isfinite(clean_terms).all(dim=1).cpu()
        bad = int((~valid).sum())
        if bad:
            self.nan_samples += bad
            warnings.warn(f"AMAT: {bad} sample(s) had NaN/inf loss terms; their margins were left "
                          f"unchanged ({self.nan_samples} so far)", RuntimeWarning, stacklevel=3)
        keep = valid.tolist()
        self.margins.update([i for i, k in zip(ids, keep) if k], acc[valid],
                            attack.noise_norm.detach().cpu()[valid])
        return acc, valid

    def config(self):
        return {**super().config(), "step": self.step_size_delta, "xi_rule": self.xi_rule,
                "xi": None if self.xi_fixed is None else self.xi_fixed.tolist(),
                "max_margin": self.margins.max_margin}

    def state_dict(self):
        return {**super().state_dict(), "margins": self.margins.state_dict(),
                "online_xi": None if self.online is None else self.online.state_dict()}

    def load_state_dict(self, state, force=False):
        super().load_state_dict(state, force=force)
        self.margins.load_state_dict(state["margins"], force=force)
        if self.online is not None and state.get("online_xi"):
            self.online.load_state_dict(state["online_xi"])

    def summary(self):
        s = {f"margin_{k}": float(v) for k, v in self.margins.summary().items()}
        xi = self.xi()
        if xi is not None:
            for k, v in enumerate(xi.tolist()):
                s[f"xi_{k}"] = v
        return {**super().summary(), **s}


MODES = ("none", "sat", "amat")
