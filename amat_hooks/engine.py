"""Drives one adversarial training step through the hooks: adapter -> policy -> trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import pluggy
import torch
from torch import Tensor, nn

from amat_hooks.attacks import AttackResult, preserved_state
from amat_hooks.policies import AMAT, BoundLoss, Policy, StepOutput  # noqa: F401 (StepOutput: public type)


class AdapterError(RuntimeError):
    """No registered adapter understands this batch/host."""


class AdversarialEngine:
    """Glue between a host trainer and a :class:`Policy`, via the ``amat_*`` hooks.

    ``step(model, batch)`` returns the loss to back-propagate (clean only for STD,
    ``(L_clean + L_noisy) / 2`` for SAT/AMAT) and updates AMAT's margins.
    """

    def __init__(self, policy: Policy, host: Any = None, pm: pluggy.PluginManager | None = None) -> None:
        if pm is None:
            from amat_hooks.plugins import get_plugin_manager

            pm = get_plugin_manager()
        self.policy = policy
        self.host = host
        self.pm = pm
        self.hook = pm.hook

    # -- adapter questions -------------------------------------------------------------------
    def inputs(self, batch: Any) -> Tensor:
        x = self.hook.amat_batch_inputs(batch=batch, host=self.host)
        if x is None:
            raise AdapterError(
                f"no amat_hooks adapter recognises this batch ({_describe(batch)}) for host "
                f"{type(self.host).__name__}; register an adapter implementing amat_batch_inputs "
                f"(entry-point group 'amat_hooks')")
        return x

    def sample_ids(self, batch: Any) -> Sequence[Hashable] | None:
        ids = self.hook.amat_batch_sample_ids(batch=batch, host=self.host)
        if ids is None and isinstance(self.policy, AMAT):
            raise AdapterError(
                f"AMAT needs sample ids but the batch ({_describe(batch)}) carries none; yield "
                f"(x, y, ids) from the DataLoader or implement amat_batch_sample_ids")
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return ids

    def bound_loss(self, batch: Any, model: nn.Module) -> BoundLoss:
        bl = self.hook.amat_bind_loss(batch=batch, model=model, host=self.host)
        if bl is None:
            raise AdapterError(f"no adapter implements amat_bind_loss for host {type(self.host).__name__}")
        return bl

    def with_inputs(self, batch: Any, inputs: Tensor) -> Any:
        out = self.hook.amat_batch_with_inputs(batch=batch, inputs=inputs, host=self.host)
        if out is None:
            raise AdapterError(f"no adapter can put a perturbed input back into {_describe(batch)}")
        return out

    # -- training ----------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        x = self.inputs(batch)
        ids = self.sample_ids(batch) if self.policy.name == "amat" else self._ids_or_none(batch)
        return self.policy.step(model, x, ids, self.bound_loss(batch, model))

    def perturb(self, model: nn.Module, batch: Any) -> tuple[Tensor, AttackResult | None]:
        """Noisy inputs for a batch, margins updated at once from the attack's own terms at
        ``x_adv`` (one extra forward pass). Hosts that run the noisy forward themselves use
        :meth:`attack` + :meth:`observe` instead and pay no extra forward."""
        p = self.attack(model, batch)
        if p.attack is None:
            return p.x, None
        if p.clean_terms is None and self.policy.needs_clean_terms:
            with torch.no_grad(), preserved_state(model):  # this extra forward must not move BN stats
                p.clean_terms = _as_terms(p.bound_loss.terms(p.x).detach())
        self.observe(p, p.attack.terms, p.clean_terms)
        return p.x_adv, p.attack

    # -- the runner's path: attack now, observe after the host's own noisy forward ------------
    @property
    def clean_terms_before_attack(self) -> bool:
        """Whether the policy needs a batch's clean terms BEFORE its attack (the boundary-stop
        variant stops PGD at xi and exempts samples already above it). Otherwise the clean
        terms of the host's own clean forward, given to :meth:`observe`, are enough."""
        return self.policy.needs_clean_terms_before_attack

    def attack(self, model: nn.Module, batch: Any, bound_loss: BoundLoss | None = None) -> "Perturbation":
        """Algorithm 1 line 3 only: the noisy inputs of ``batch``, margins NOT updated.

        ``bound_loss`` (default: the ``amat_bind_loss`` hook) is the attack objective. Where
        :attr:`clean_terms_before_attack`, the clean terms are computed here (one no-grad
        forward, normalisation statistics preserved) and given to the policy. The host then
        runs its own clean and noisy forward and calls :meth:`observe` with their terms.
        """
        x = self.inputs(batch)
        ids = self.sample_ids(batch) if self.policy.name == "amat" else self._ids_or_none(batch)
        bl = bound_loss if bound_loss is not None else self.bound_loss(batch, model)
        clean_terms = None
        clean_observed = False
        if self.clean_terms_before_attack:
            with torch.no_grad(), preserved_state(model):  # must not move BN stats
                clean_terms = _as_terms(bl.terms(x).detach())
            self.policy.observe_clean(clean_terms)
            clean_observed = True
        attack = self.policy.perturb(model, x, ids, bl.terms, clean_terms=clean_terms)
        return Perturbation(x=x, ids=ids, attack=attack, bound_loss=bl, clean_terms=clean_terms,
                            clean_observed=clean_observed, eps=getattr(self.policy, "last_eps", None))

    def observe(self, perturbation: "Perturbation", noisy_terms: Tensor,
                clean_terms: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Algorithm 1 lines 9-12 for a batch attacked with :meth:`attack`, with the
        per-sample terms of the host's own noisy training forward (and of its clean forward:
        AMAT's online xi, NaN checks). Returns (accepted [B], updated [B]) where relevant."""
        p = perturbation
        if clean_terms is not None:
            clean_terms = _as_terms(clean_terms.detach())
            if not p.clean_observed:
                self.policy.observe_clean(clean_terms)
                p.clean_observed = True
        if p.attack is None:
            return None, None
        ct = p.clean_terms if p.clean_terms is not None else clean_terms
        return self.policy.observe(p.ids, _as_terms(noisy_terms.detach()), p.attack, ct)

    def _ids_or_none(self, batch: Any):
        ids = self.hook.amat_batch_sample_ids(batch=batch, host=self.host)
        return ids.tolist() if isinstance(ids, Tensor) else ids

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Merge margins across ranks, then tell ``amat_epoch_end``; returns the summary."""
        if isinstance(self.policy, AMAT):
            self.policy.margins.sync()
        summary = self.policy.summary()
        self.hook.amat_epoch_end(epoch=epoch, summary=summary, host=self.host)
        return summary

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        self.policy.load_state_dict(state["policy"], force=force)


@dataclass
class Perturbation:
    """One batch attacked by :meth:`AdversarialEngine.attack`, waiting for its observation."""

    x: Tensor
    ids: Sequence[Hashable] | None
    attack: AttackResult | None
    bound_loss: BoundLoss
    clean_terms: Tensor | None = None
    clean_observed: bool = False
    eps: Tensor | None = None

    @property
    def x_adv(self) -> Tensor:
        return self.x if self.attack is None else self.attack.x_adv


def _as_terms(t: Tensor) -> Tensor:
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1) if t.dim() > 2 else t.unsqueeze(1)


def _describe(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, dict):
        return "dict with keys " + ", ".join(map(str, list(batch)[:8]))
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__} of {len(batch)}: " + ", ".join(
            type(b).__name__ for b in batch[:6])
    return type(batch).__name__
