"""The generic adapter for plain PyTorch loops, and :class:`AdversarialLoop`.

Batches are ``(x, y)`` or ``(x, y, ids)`` tuples/lists, or dicts with ``x``/``input``/
``image``, ``y``/``target``/``label`` and ``ids``/``id``/``index`` keys. The host is an
:class:`AdversarialLoop` (it holds the user's per-sample loss function).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

from ..config import AdvConfig
from ..engine import AdversarialEngine
from ..evaluation import EvalBatch, EvalTask
from ..hookspecs import hookimpl
from ..policies import BoundLoss, StepOutput

_X_KEYS = ("x", "input", "inputs", "image", "images")
_Y_KEYS = ("y", "target", "targets", "label", "labels")
_ID_KEYS = ("ids", "id", "index", "indices", "sample_id")


def _key(d: dict, keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in d), None)


def _is_tuple_batch(batch: Any) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)


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
                 **config_kwargs: Any) -> None:
        if isinstance(config, str):
            config = AdvConfig(mode=config, **config_kwargs)
        self.model = model
        self.loss_fn = loss_fn
        self.config = config.validate()
        self.engine = AdversarialEngine(config.build_policy(dataset_id=dataset_id), host=self, pm=pm)
        self.last: StepOutput | None = None

    @property
    def policy(self):
        return self.engine.policy

    def loss(self, batch: Any) -> Tensor:
        self.last = self.engine.step(self.model, batch)
        return self.last.loss

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return self.engine.epoch_end(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), **self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        self.engine.load_state_dict(state, force=force)


# -- hook implementations (module-level: this module is the plugin) -------------------------
@hookimpl
def amat_batch_inputs(batch: Any, host: Any) -> Tensor | None:
    if _is_tuple_batch(batch):
        return batch[0]
    if isinstance(batch, dict):
        k = _key(batch, _X_KEYS)
        if k is not None and isinstance(batch[k], Tensor):
            return batch[k]
    return None


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    ids = None
    if _is_tuple_batch(batch) and len(batch) >= 3:
        ids = batch[2]
    elif isinstance(batch, dict) and _key(batch, _X_KEYS) is not None:
        k = _key(batch, _ID_KEYS)
        ids = batch[k] if k is not None else None
    if isinstance(ids, Tensor):
        return ids.tolist()
    return list(ids) if ids is not None else None


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    n = inputs.shape[0]
    if _is_tuple_batch(batch):
        b = batch[0].shape[0]
        rest = [_repeat_rows(v, b, n) for v in batch[1:]]
        return type(batch)([inputs, *rest]) if isinstance(batch, list) else (inputs, *rest)
    if isinstance(batch, dict) and _key(batch, _X_KEYS) is not None:
        k = _key(batch, _X_KEYS)
        b = batch[k].shape[0]
        return {key: (inputs if key == k else _repeat_rows(v, b, n)) for key, v in batch.items()}
    return None


@hookimpl
def amat_bind_loss(batch: Any, model: nn.Module, host: Any) -> BoundLoss | None:
    if not isinstance(host, AdversarialLoop):
        return None
    if _is_tuple_batch(batch):
        y = batch[1]
    elif isinstance(batch, dict) and _key(batch, _Y_KEYS) is not None:
        y = batch[_key(batch, _Y_KEYS)]
    else:
        return None
    loss_fn = host.loss_fn
    return BoundLoss(terms=lambda x: loss_fn(model(x), y))


def _repeat_rows(v: Any, b: int, n: int) -> Any:
    """Targets/ids of a batch of b rows, repeated to n = k*b rows (clean + noisy copies)."""
    if n == b:
        return v
    k, r = divmod(n, b)
    if r:
        raise ValueError(f"cannot stretch a batch of {b} rows to {n}")
    if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == b:
        return v.repeat(k, *([1] * (v.dim() - 1)))
    if isinstance(v, (list, tuple)) and len(v) == b:
        return type(v)(list(v) * k)
    return v


class SegmentationEvalTask(EvalTask):
    """Robustness evaluation of a plain segmentation model on in-memory tensors.

    A sample is one image; ``loss_fn(output, target)`` is the per-sample training loss
    (the white-box attack objective). Metrics: ADI (primary) and TVDI over ``labels``.
    """

    name = "segmentation"
    metric = "ADI"
    higher_is_better = True

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 batch_size: int = 16, labels: Sequence[int] = (1,),
                 bounds: tuple[float, float] | None = None) -> None:
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[1:]:
            raise ValueError(f"images {tuple(x.shape)} and label maps {tuple(y.shape)} do not match "
                             f"(need [N, C, *S] and [N, *S])")
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.batch_size, self.labels, self.bounds = batch_size, list(labels), bounds

    def batches(self):
        for s in range(0, self.x.shape[0], self.batch_size):
            yield EvalBatch(key=f"{s}", x=self.x[s:s + self.batch_size], target=self.y[s:s + self.batch_size])

    def size(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def loss_terms(self, x: Tensor, target: Tensor, repeats: int) -> Tensor:
        return self.loss_fn(self.model(x), target.repeat(repeats, *([1] * (target.dim() - 1))))

    def measure(self, x: Tensor, target: Tensor):
        from ..metrics import dice_counts

        return dice_counts(self.model(x).argmax(1), target, labels=self.labels).tolist()

    def reduce(self, stats):
        from ..metrics import adi, tvdi

        counts = torch.tensor([row for s in stats for row in s], dtype=torch.float64)
        return {"ADI": adi(counts), "TVDI": tvdi(counts)}
