"""Sample ids for ``amat run``: the dataset index travels with the sample.

:class:`IndexedDataset` wraps the script's map-style dataset so ``__getitem__(i)`` returns
``(sample, i)``; :class:`IndexCollate` wraps the loader's collate function and strips the
indices into :attr:`IndexedBatch.ids`. Because the index rides along with the sample
through the worker processes, this is right for any sampler, ``shuffle=True``,
``num_workers`` 0 or more, ``in_order=False`` and persistent workers.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor


class _Indexed(tuple):
    """(sample, dataset index) as returned by :class:`IndexedDataset`."""

    __slots__ = ()


class IndexedDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset: ``__getitem__(i)`` -> ``(sample, i)``; everything else
    (``len``, attributes) is forwarded, so the script's code keeps working."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, index: Any) -> _Indexed:
        return _Indexed((self.dataset[index], plain_index(index)))

    def __getitems__(self, indices: Sequence[Any]) -> list:
        inner = getattr(self.dataset, "__getitems__", None)
        samples = inner(indices) if callable(inner) else [self.dataset[i] for i in indices]
        return [_Indexed((s, plain_index(i))) for s, i in zip(samples, indices)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # during unpickling, before __init__ state exists
            raise AttributeError(name)
        return getattr(self.dataset, name)


def plain_index(index: Any) -> Hashable:
    """A dataset index as a hashable Python value (tensor indices from custom samplers)."""
    if isinstance(index, Tensor):
        return index.item() if index.numel() == 1 else tuple(index.tolist())
    return index


class IndexedBatch:
    """A collated batch and the dataset indices of its samples (one per row)."""

    __slots__ = ("data", "ids")

    def __init__(self, data: Any, ids: list) -> None:
        self.data = data
        self.ids = ids

    def pin_memory(self) -> "IndexedBatch":
        from torch.utils.data._utils.pin_memory import pin_memory

        return IndexedBatch(pin_memory(self.data), self.ids)


class IndexCollate:
    """Wraps the loader's collate function: strips the indices into ``IndexedBatch.ids``."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, data: Any) -> Any:
        if isinstance(data, _Indexed):  # no auto-batching: one sample per "batch"
            return IndexedBatch(self.collate_fn(data[0]), [data[1]])
        if isinstance(data, list) and data and all(isinstance(d, _Indexed) for d in data):
            return IndexedBatch(self.collate_fn([d[0] for d in data]), [d[1] for d in data])
        return self.collate_fn(data)


def batch_rows(data: Any) -> int | None:
    """Rows of a collated batch: the first dimension of its first tensor (nested in
    tuples, lists and dicts), or None."""
    if isinstance(data, Tensor):
        return int(data.shape[0]) if data.dim() > 0 else None
    items = data.values() if isinstance(data, dict) else data if isinstance(data, (list, tuple)) else ()
    for v in items:
        n = batch_rows(v)
        if n is not None:
            return n
    return None
