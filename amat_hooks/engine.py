"""One adversarial training step: adapter -> policy -> the trainer's own backward and step.

The engine holds a :class:`~amat_hooks.policies.Policy` (STD / SAT / AMAT) and the host's
:class:`~amat_hooks.adapter.BatchAdapter`. Two ways to drive it:

* :meth:`AdversarialEngine.step` for hosts that own the loss call (the plain loop, the
  nnU-Net and Ultralytics trainers): clean forward, PGD, noisy forward, ``(L0 + L1) / 2``,
  margin update;
* :meth:`~AdversarialEngine.attack` then :meth:`~AdversarialEngine.observe` for hosts that
  only see batches (``amat run``): the noisy rows now, the margin test after the script's
  own forward, from its outputs (no extra forward pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import pluggy
import torch
from torch import Tensor, nn

from amat_hooks.adapter import AdapterError, BatchAdapter, BoundLoss, as_terms, check_ids
from amat_hooks.attacks import AttackResult, preserved_state
from amat_hooks.policies import Policy
from amat_hooks.policy_types import StepOutput
from amat_hooks.thresholds import check_xi_reachable


class AdversarialEngine:
    """Glue between a host trainer, its adapter and a :class:`Policy`."""

    def __init__(self, policy: Policy, adapter: BatchAdapter, host: Any = None,
                 pm: pluggy.PluginManager | None = None) -> None:
        if not isinstance(adapter, BatchAdapter):
            raise TypeError(f"adapter must be a BatchAdapter, got {type(adapter).__name__}")
        self.policy, self.adapter, self.host = policy, adapter, host
        self._pm = pm
        self._ids_checked = False
        self._xi_checked = False

    @property
    def pm(self) -> pluggy.PluginManager:
        if self._pm is None:
            from amat_hooks.plugins import get_plugin_manager

            self._pm = get_plugin_manager()
        return self._pm

    def _check_xi(self, model: nn.Module, x: Tensor, bl: BoundLoss) -> None:
        """Once, before the first attack: a fixed xi with another number of values than the
        loss has terms, or one the terms can never go below, is refused (the first would fail
        inside the step, the second make AMAT a SAT at Delta without a word). Where the adapter
        cannot say how many terms its loss returns, one no-grad forward of the first batch does."""
        if self._xi_checked:
            return
        self._xi_checked = True
        xi = getattr(self.policy, "xi_fixed", None)
        if xi is None:
            return
        where = _xi_where(getattr(self.policy, "xi_source", None))
        names = list(self.adapter.term_names)
        if self.adapter.terms_known:
            k = len(names)
        else:
            with torch.no_grad(), preserved_state(model):
                k = as_terms(bl.terms(x), x.shape[0]).shape[1]
        if xi.numel() != k:
            raise AdapterError(f"{where} has {xi.numel()} value(s) {[round(v, 6) for v in xi.tolist()]}, the loss has "
                               f"{k} term{'s' if k != 1 else ''} per sample" + (f" ({', '.join(names)})" if
                                                                              self.adapter.terms_known else "")
                               + "; give one xi per term, or recalibrate for this loss (amat calibrate <task>)")
        try:
            check_xi_reachable(xi.tolist(), self.adapter.term_floors, names, where=where)
        except ValueError as e:
            raise AdapterError(str(e)) from None

    def _ids(self, batch: Any, ids: Sequence[Hashable] | None, rows: int) -> list[Hashable] | None:
        """The batch's sample ids (the host's, else the adapter's), checked; AMAT needs them."""
        ids = self.adapter.ids(batch) if ids is None else ids
        if self.policy.name != "amat":
            return None if ids is None else list(ids.tolist() if isinstance(ids, Tensor) else ids)
        ids = check_ids(ids, rows)
        margins = getattr(self.policy, "margins", None)
        if margins is not None and margins.initial:
            try:
                margins.check_initial(ids)
            except ValueError as e:
                raise AdapterError(str(e)) from None
        if not self._ids_checked:
            self._ids_checked = True
            if rows > 1 and len(set(ids)) == 1:
                raise AdapterError(f"every sample of the first batch has the id {ids[0]!r}: ids must tell the "
                                   f"samples apart (one margin per sample); yield the dataset index")
        return ids

    # -- hosts that own the loss call -----------------------------------------------------------
    def step(self, model: nn.Module, batch: Any, ids: Sequence[Hashable] | None = None) -> StepOutput:
        x = self.adapter.inputs(batch)
        ids = self._ids(batch, ids, x.shape[0])
        bl = self.adapter.bind_loss(batch, model)
        self._check_xi(model, x, bl)
        return self.policy.step(model, x, ids, bl)

    # -- hosts that only see batches ------------------------------------------------------------
    def attack(self, model: nn.Module, batch: Any, ids: Sequence[Hashable] | None = None,
               bound_loss: BoundLoss | None = None) -> "Perturbation":
        """Algorithm 1 line 3 only: the noisy inputs of ``batch``, margins NOT updated yet.

        Where the policy needs a batch's clean terms before its attack (the boundary-stop
        variant), they are computed here (one no-grad forward, normalisation statistics
        preserved). The host then runs its own clean and noisy forward and calls :meth:`observe`.
        """
        x = self.adapter.inputs(batch)
        ids = self._ids(batch, ids, x.shape[0])
        bl = bound_loss if bound_loss is not None else self.adapter.bind_loss(batch, model)
        self._check_xi(model, x, bl)
        clean_terms = None
        if self.policy.needs_clean_terms_before_attack:
            with torch.no_grad(), preserved_state(model):
                clean_terms = as_terms(bl.terms(x).detach(), x.shape[0])
            self.policy.observe_clean(clean_terms)
        attack = self.policy.perturb(model, x, ids, bl.terms, clean_terms=clean_terms)
        return Perturbation(x=x, ids=ids, attack=attack, bound_loss=bl, clean_terms=clean_terms,
                            clean_observed=clean_terms is not None, eps=self.policy.last_eps)

    def observe(self, perturbation: "Perturbation", noisy_terms: Tensor,
                clean_terms: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Algorithm 1 lines 9-12 for a batch attacked with :meth:`attack`, with the
        per-sample terms of the host's own noisy training forward (and of its clean forward:
        AMAT's online xi, NaN checks). Returns (accepted [B], updated [B]) where relevant."""
        p = perturbation
        b = p.x.shape[0]
        if clean_terms is not None:
            clean_terms = as_terms(clean_terms.detach(), b)
            if not p.clean_observed:
                self.policy.observe_clean(clean_terms)
                p.clean_observed = True
        if p.attack is None:
            return None, None
        ct = p.clean_terms if p.clean_terms is not None else clean_terms
        return self.policy.observe(p.ids, as_terms(noisy_terms.detach(), b), p.attack, ct)

    # -- epochs and state -----------------------------------------------------------------------
    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Merge margins across ranks, then tell ``amat_epoch_end``; returns the summary."""
        margins = getattr(self.policy, "margins", None)
        if margins is not None:
            margins.sync()
            margins.end_epoch()  # update="epoch" (the authors' code): the epoch's visits applied now
        summary = self.policy.summary()
        self.pm.hook.amat_epoch_end(epoch=epoch, summary=summary, host=self.host)
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("policy"), dict):
            raise ValueError("not an adversarial state: it has no 'policy' entry (was it written by amat-hooks?)")
        self.policy.load_state_dict(state["policy"], force=force)


def _xi_where(source: str | None) -> str:
    return "AdvConfig(xi=...)" if source in (None, "given") else f"xi from {source}"


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
