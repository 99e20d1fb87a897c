"""The plain-PyTorch front end: :class:`AdversarialLoop` adds STD/SAT/AMAT to a hand-written
training loop in two lines. It is a generic host: it asks the plugins once, with the first
batch, which :class:`~amat_hooks.adapter.BatchAdapter` fits (``amat_adapter``); the answer
for ``(x, y[, ids])`` tuples and dicts is this module's ``trylast`` one."""
from __future__ import annotations

import sys
from typing import Any, Callable

from torch import Tensor, nn

from amat_hooks.adapter import (NON_NEGATIVE_LOSSES, AdapterError, BatchAdapter, TupleAdapter, describe_batch,
                                is_generic_batch)
from amat_hooks.config import AdvConfig
from amat_hooks.engine import AdversarialEngine
from amat_hooks.hookspecs import hookimpl
from amat_hooks.policy_types import StepOutput


def per_sample_mean(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap an unreduced loss (``reduction='none'``) into per-sample values ``[B]``."""
    def wrapped(output: Tensor, target: Tensor) -> Tensor:
        v = loss_fn(output, target)
        if v.dim() == 0:
            raise AdapterError("the loss returned one number for the whole batch; create it with "
                               "reduction='none' (e.g. nn.CrossEntropyLoss(reduction='none'))")
        return v.reshape(v.shape[0], -1).mean(1)
    wrapped.term_floors = (0.0,) if isinstance(loss_fn, NON_NEGATIVE_LOSSES) else None  # type: ignore[attr-defined]
    return wrapped


class AdversarialLoop:
    """STD/SAT/AMAT for a hand-written loop in two lines::

        adv = AdversarialLoop(model, per_sample_loss, AdvConfig(mode="amat", delta=0.5))
        for x, y, ids in loader:
            loss = adv.loss((x, y, ids)); opt.zero_grad(); loss.backward(); opt.step()
        adv.epoch_end(epoch)

    ``loss_fn(output, target)`` returns per-sample terms ``[B]`` or ``[B, K]``. ``adapter``:
    a :class:`~amat_hooks.adapter.BatchAdapter` for batches of another shape (default: the
    plugins' answer for the first batch).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
                 config: AdvConfig | str = "none", adapter: BatchAdapter | None = None, pm=None,
                 dataset_id: str | None = None, log: Callable[[str], None] | None = None,
                 **config_kwargs: Any) -> None:
        if isinstance(config, str):
            config = AdvConfig(mode=config, **config_kwargs)
        if adapter is None and loss_fn is None:
            raise AdapterError("AdversarialLoop needs a per-sample loss_fn or an adapter")
        self.model, self.loss_fn = model, loss_fn
        self.config = config.resolved(adapter.protocol_kind if adapter is not None else "generic")
        self._log = log
        self._pm = pm
        self.amat_history: list[dict[str, float]] = []
        self.policy = config.build_policy(dataset_id=dataset_id, log=self.amat_log,
                                          calibrate_hint="thresholds.xi_from_losses on a clean model's per-sample "
                                                         "training losses, passed as AdvConfig(xi=...)")
        self.engine: AdversarialEngine | None = None
        if adapter is not None:
            self._use(adapter)
        self.last: StepOutput | None = None

    def amat_log(self, message: str) -> None:
        """The policy's notices (e.g. where xi comes from): ``log`` if given, else stderr."""
        if self._log is not None:
            self._log(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def _use(self, adapter: BatchAdapter) -> None:
        adapter.configure(self.config)
        self.engine = AdversarialEngine(self.policy, adapter, host=self, pm=self._pm)
        self.amat_log(f"adapter: {adapter.describe()}")

    def _adapter_for(self, batch: Any) -> BatchAdapter:
        from amat_hooks.plugins import get_plugin_manager

        pm = self._pm or get_plugin_manager()
        adapter = pm.hook.amat_adapter(batch=batch, host=self)
        if adapter is None:
            raise AdapterError(f"no amat_hooks adapter recognises this batch ({describe_batch(batch)}); yield "
                               f"(x, y[, ids]) or a dict with x/y/ids keys, or pass AdversarialLoop(adapter=...)")
        return adapter

    def loss(self, batch: Any) -> Tensor:
        if self.engine is None:
            self._use(self._adapter_for(batch))
        self.last = self.engine.step(self.model, batch)
        return self.last.loss

    def epoch_end(self, epoch: int) -> dict[str, float]:
        if self.engine is None:  # no batch seen: nothing to merge, the summary is the policy's
            return self.policy.summary()
        return self.engine.epoch_end(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": list(self.amat_history),
                "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("policy"), dict):
            raise ValueError("not an AdversarialLoop state: it has no 'policy' entry (use adv.state_dict())")
        self.policy.load_state_dict(state["policy"], force=force)
        self.amat_history = list(state.get("history") or [])


@hookimpl(trylast=True)
def amat_adapter(batch: Any, host: Any) -> BatchAdapter | None:
    """The loop's generic answer: ``(x, y[, ids])`` / dict batches scored by ``host.loss_fn``."""
    if isinstance(host, AdversarialLoop) and host.loss_fn is not None and is_generic_batch(batch):
        return TupleAdapter(host.loss_fn)
    return None
