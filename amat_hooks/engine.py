"""Drives one adversarial training step through the hooks: adapter -> policy -> trainer."""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import pluggy
import torch
from torch import Tensor, nn

from .attacks import AttackResult, preserved_state
from .policies import AMAT, BoundLoss, Policy, StepOutput  # noqa: F401 (StepOutput: public type)


class AdapterError(RuntimeError):
    """No registered adapter understands this batch/host."""


class AdversarialEngine:
    """Glue between a host trainer and a :class:`Policy`, via the ``amat_*`` hooks.

    ``step(model, batch)`` returns the loss to back-propagate (clean only for STD,
    ``(L_clean + L_noisy) / 2`` for SAT/AMAT) and updates AMAT's margins.
    """

    def __init__(self, policy: Policy, host: Any = None, pm: pluggy.PluginManager | None = None) -> None:
        if pm is None:
            from .plugins import get_plugin_manager

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
        """Noisy inputs for a batch (runner path: the host computes its own loss)."""
        x = self.inputs(batch)
        ids = self.sample_ids(batch) if self.policy.name == "amat" else self._ids_or_none(batch)
        bl = self.bound_loss(batch, model)
        clean_terms = None
        if self.policy.needs_clean_terms:  # online xi / boundary stop need the clean losses
            with torch.no_grad(), preserved_state(model):  # this extra forward must not move BN stats
                clean_terms = bl.terms(x).detach()
                clean_terms = clean_terms if clean_terms.dim() == 2 else clean_terms.unsqueeze(1)
            self.policy.observe_clean(clean_terms)
        attack = self.policy.perturb(model, x, ids, bl.terms, clean_terms=clean_terms)
        if attack is None:
            return x, None
        self.policy.observe(ids, attack.terms, attack, clean_terms)
        return attack.x_adv, attack

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


def _describe(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, dict):
        return "dict with keys " + ", ".join(map(str, list(batch)[:8]))
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__} of {len(batch)}: " + ", ".join(
            type(b).__name__ for b in batch[:6])
    return type(batch).__name__
