"""The plain-PyTorch front end: :class:`AdversarialLoop` adds STD/SAT/AMAT to a hand-written
training loop in two lines (the generic adapter in :mod:`.integrations.torch_loop`
describes its batches)."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from amat_hooks.config import AdvConfig
from amat_hooks.engine import AdversarialEngine
from amat_hooks.policies import StepOutput


def per_sample_mean(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap an unreduced loss (``reduction='none'``) into per-sample values ``[B]``."""
    def wrapped(output: Tensor, target: Tensor) -> Tensor:
        v = loss_fn(output, target)
        return v.reshape(v.shape[0], -1).mean(1)
    return wrapped


class AdversarialLoop:
    """STD/SAT/AMAT for a hand-written loop in two lines::

        adv = AdversarialLoop(model, per_sample_loss, AdvConfig(mode="amat", step=0.5))
        for x, y, ids in loader:
            loss = adv.loss((x, y, ids)); opt.zero_grad(); loss.backward(); opt.step()
        adv.epoch_end(epoch)

    ``loss_fn(output, target)`` returns per-sample terms ``[B]`` or ``[B, K]``.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 config: AdvConfig | str = "none", pm=None, dataset_id: str | None = None,
                 log: Callable[[str], None] | None = None, **config_kwargs: Any) -> None:
        if isinstance(config, str):
            config = AdvConfig(mode=config, **config_kwargs)
        self.model = model
        self.loss_fn = loss_fn
        self.config = config.validate()
        self._log = log
        self.amat_history: list[dict[str, float]] = []
        policy = config.build_policy(dataset_id=dataset_id, log=self.amat_log,
                                     calibrate_hint="thresholds.xi_from_losses on a clean model's per-sample "
                                                    "training losses, passed as AdvConfig(xi=...)")
        self.engine = AdversarialEngine(policy, host=self, pm=pm)
        self.last: StepOutput | None = None

    def amat_log(self, message: str) -> None:
        """The policy's notices (e.g. where xi comes from): ``log`` if given, else stderr."""
        if self._log is not None:
            self._log(message)
        else:
            import sys

            print(message, file=sys.stderr, flush=True)

    @property
    def policy(self):
        return self.engine.policy

    def loss(self, batch: Any) -> Tensor:
        self.last = self.engine.step(self.model, batch)
        return self.last.loss

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return self.engine.epoch_end(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": list(self.amat_history), **self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        self.engine.load_state_dict(state, force=force)
        self.amat_history = list(state.get("history") or [])
