"""amat_hooks adapter for Multi-Task U-Net training loops (the original public code's shape).

A batch is ``(image, mask, heatmap, offset_y, offset_x[, landmarks, ...])`` - the tuple
the original ``Cephalometric`` dataset yields - or a dict with keys ``image``, ``mask``,
``heatmap``, ``offset_y``, ``offset_x``. The model returns ``(heatmap, offset_y,
offset_x)``. A host opts in to the loss by having ``landmark_heatmap_loss`` ("bce" or
"dice"; the runner sets it) and optionally ``landmark_bce`` (the script's own
``nn.BCELoss``, called unreduced).
"""
from __future__ import annotations

import argparse
from typing import Any, Hashable, Sequence

from torch import Tensor, nn

from ...hookspecs import hookimpl

_DICT_KEYS = ("image", "mask", "heatmap", "offset_y", "offset_x")


def _maps(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """(image, mask, heatmap, offset_y, offset_x) if ``batch`` looks like a landmark batch."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 5:
        items = batch[:5]
    elif isinstance(batch, dict) and all(k in batch for k in _DICT_KEYS):
        items = [batch[k] for k in _DICT_KEYS]
    else:
        return None
    if not all(isinstance(t, Tensor) for t in items):
        return None
    x, m = items[0], items[1]
    if x.dim() != 4 or m.dim() != 4 or m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
        return None
    if any(t.shape != m.shape for t in items[2:]):
        return None
    return tuple(items)  # type: ignore[return-value]


def is_landmark_batch(batch: Any) -> bool:
    return _maps(batch) is not None


def repeat_rows(v: Any, b: int, k: int) -> Any:
    """Repeat every per-sample entry (tensors with b rows, also nested in lists/tuples/dicts,
    like the collated ``landmark_list`` of the original loader) k times along the batch."""
    if k == 1:
        return v
    if isinstance(v, Tensor):
        return v.repeat(k, *([1] * (v.dim() - 1))) if v.dim() > 0 and v.shape[0] == b else v
    if isinstance(v, dict):
        return {key: repeat_rows(val, b, k) for key, val in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) == b and not any(isinstance(e, (Tensor, list, tuple, dict)) for e in v):
            return type(v)(list(v) * k)  # a list of per-sample scalars/strings (ids, names)
        return type(v)(repeat_rows(e, b, k) for e in v)
    return v


# -- hook implementations ----------------------------------------------------------------------
@hookimpl
def amat_batch_inputs(batch: Any, host: Any) -> Tensor | None:
    maps = _maps(batch)
    return None if maps is None else maps[0]


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    if isinstance(batch, dict) and _maps(batch) is not None:
        for key in ("ids", "id", "index"):
            if key in batch:
                ids = batch[key]
                return ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return None  # tuple batches carry no ids: the runner supplies them from the DataLoader


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    maps = _maps(batch)
    if maps is None:
        return None
    b, n = maps[0].shape[0], inputs.shape[0]
    k, r = divmod(n, b)
    if r or k < 1:
        raise ValueError(f"cannot stretch a landmark batch of {b} rows to {n} rows")
    if isinstance(batch, dict):
        key = "image"
        return {kk: (inputs if kk == key else repeat_rows(v, b, k)) for kk, v in batch.items()}
    rest = [repeat_rows(v, b, k) for v in batch[1:]]
    return type(batch)([inputs, *rest]) if isinstance(batch, list) else (inputs, *rest)


@hookimpl
def amat_bind_loss(batch: Any, model: nn.Module, host: Any):
    kind = getattr(host, "landmark_heatmap_loss", None)
    maps = _maps(batch)
    if kind is None or maps is None:
        return None
    from ...policies import BoundLoss
    from .losses import TERM_NAMES, landmark_terms

    _, mask, heatmap, offset_y, offset_x = maps
    bce = getattr(host, "landmark_bce", None)

    def terms(x: Tensor) -> Tensor:
        return landmark_terms(model(x), mask, heatmap, offset_y, offset_x, heatmap_loss=kind, bce=bce)

    return BoundLoss(terms=terms, term_names=TERM_NAMES)


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "landmark-data", help="write a generated landmark dataset in the ISBI 2015 layout",
        description="Write a seeded, generated cephalometric-like landmark dataset in the ISBI 2015 "
                    "folder layout (dataset/benchmark/images, points.csv, metadata.yaml, senior_csv/), "
                    "for the example script and CI. No downloads.")
    p.add_argument("out", help="folder to create (like ../shared/data/isbi2015_ceph)")
    p.add_argument("--n", type=int, default=40, help="number of images (default 40)")
    p.add_argument("--height", type=int, default=240, help="original image height (default 240)")
    p.add_argument("--width", type=int, default=192, help="original image width (default 192)")
    p.add_argument("--landmarks", type=int, default=19, help="landmarks per image (default 19)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_data)


def _make_data(args: argparse.Namespace) -> int:
    from .data import write_generated_isbi

    root = write_generated_isbi(args.out, n=args.n, height=args.height, width=args.width,
                                num_landmarks=args.landmarks, seed=args.seed)
    print(f"wrote {args.n} generated images with {args.landmarks} landmarks to {root}")
    return 0


@hookimpl
def amat_tasks():
    from .task import LandmarkTask

    return [LandmarkTask()]
