"""The generic adapter for plain PyTorch loops.

Batches are ``(x, y)`` or ``(x, y, ids)`` tuples/lists, or dicts with ``x``/``input``/
``image``, ``y``/``target``/``label`` and ``ids``/``id``/``index`` keys. The host is an
:class:`~amat_hooks.loop.AdversarialLoop` (it holds the user's per-sample loss function).
These sniffers are ``trylast``: any adapter that recognises a batch more specifically wins.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

from torch import Tensor, nn

from amat_hooks.hookspecs import hookimpl
from amat_hooks.loop import AdversarialLoop, per_sample_mean  # noqa: F401 (the documented import path)
from amat_hooks.evaluation.segmentation import SegmentationEvalTask  # noqa: F401 (import path of amat-hooks 0.1)
from amat_hooks.policies import BoundLoss

#: Dict batch keys of the input, the target and the sample ids (first match wins).
X_KEYS = ("x", "input", "inputs", "image", "images")
Y_KEYS = ("y", "target", "targets", "label", "labels")
ID_KEYS = ("ids", "id", "index", "indices", "sample_id")


def find_key(d: dict, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that ``d`` has, or None."""
    return next((k for k in keys if k in d), None)


def is_tuple_batch(batch: Any) -> bool:
    """``(x, y, ...)``: a tuple/list of at least two items whose first is a tensor."""
    return isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)


def batch_target(batch: Any) -> Any:
    """The target of an ``(x, y, ...)`` or dict batch, or None if it has none."""
    if is_tuple_batch(batch):
        return batch[1]
    if isinstance(batch, dict):
        k = find_key(batch, Y_KEYS)
        return batch[k] if k is not None else None
    return None


# the names before 0.2
_X_KEYS, _Y_KEYS, _ID_KEYS, _key, _is_tuple_batch = X_KEYS, Y_KEYS, ID_KEYS, find_key, is_tuple_batch


# -- hook implementations (module-level: this module is the plugin) -------------------------
@hookimpl(trylast=True)
def amat_batch_inputs(batch: Any, host: Any) -> Tensor | None:
    if is_tuple_batch(batch):
        return batch[0]
    if isinstance(batch, dict):
        k = find_key(batch, X_KEYS)
        if k is not None and isinstance(batch[k], Tensor):
            return batch[k]
    return None


@hookimpl(trylast=True)
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    ids = None
    if is_tuple_batch(batch) and len(batch) >= 3:
        ids = batch[2]
    elif isinstance(batch, dict) and find_key(batch, X_KEYS) is not None:
        k = find_key(batch, ID_KEYS)
        ids = batch[k] if k is not None else None
    if isinstance(ids, Tensor):
        return ids.tolist()
    return list(ids) if ids is not None else None


@hookimpl(trylast=True)
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    n = inputs.shape[0]
    if is_tuple_batch(batch):
        b = batch[0].shape[0]
        rest = [_repeat_rows(v, b, n) for v in batch[1:]]
        return type(batch)([inputs, *rest]) if isinstance(batch, list) else (inputs, *rest)
    if isinstance(batch, dict) and find_key(batch, X_KEYS) is not None:
        k = find_key(batch, X_KEYS)
        b = batch[k].shape[0]
        return {key: (inputs if key == k else _repeat_rows(v, b, n)) for key, v in batch.items()}
    return None


@hookimpl(trylast=True)
def amat_bind_loss(batch: Any, model: nn.Module, host: Any) -> BoundLoss | None:
    if not isinstance(host, AdversarialLoop):
        return None
    y = batch_target(batch)
    if y is None:
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
