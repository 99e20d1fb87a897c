"""amat_hooks adapter for Multi-Task U-Net training loops (the original public code's shape).

A batch is ``(image, mask, heatmap, offset_y, offset_x[, landmarks, ...])`` - the tuple
the original ``Cephalometric`` dataset yields - or a dict with keys ``image``, ``mask``,
``heatmap``, ``offset_y``, ``offset_x``. The model returns ``(heatmap, offset_y,
offset_x)``. Three per-sample loss terms: heatmap (Dice or BCE), masked L1 of x and y offsets.

* ``amat run``: ``amat_runner_loss`` describes the loss (:mod:`.runner_loss`: BCE vs Dice
  inferred from the script's ``nn.BCELoss``, or ``--heatmap-loss``, a flag this plugin adds
  to ``amat run``).
* other hosts opt in to ``amat_bind_loss`` by having ``landmark_heatmap_loss`` ("bce" or
  "dice") and optionally ``landmark_bce`` (a ``nn.BCELoss``, called unreduced).
"""
from __future__ import annotations

import argparse
from typing import Any, Hashable, Sequence

from torch import Tensor, nn

from amat_hooks.hookspecs import hookimpl

_DICT_KEYS = ("image", "mask", "heatmap", "offset_y", "offset_x")


def landmark_maps(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
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
    return landmark_maps(batch) is not None


_maps = landmark_maps  # the name before 0.2


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
    maps = landmark_maps(batch)
    return None if maps is None else maps[0]


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    if isinstance(batch, dict) and landmark_maps(batch) is not None:
        for key in ("ids", "id", "index"):
            if key in batch:
                ids = batch[key]
                return ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return None  # tuple batches carry no ids: the runner supplies them from the DataLoader


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    maps = landmark_maps(batch)
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
    maps = landmark_maps(batch)
    if kind is None or maps is None:
        return None
    from amat_hooks.policies import BoundLoss
    from amat_hooks.integrations.multitask_unet.losses import TERM_NAMES, landmark_terms

    _, mask, heatmap, offset_y, offset_x = maps
    bce = getattr(host, "landmark_bce", None)

    def terms(x: Tensor) -> Tensor:
        return landmark_terms(model(x), mask, heatmap, offset_y, offset_x, heatmap_loss=kind, bce=bce)

    return BoundLoss(terms=terms, term_names=TERM_NAMES)


@hookimpl
def amat_runner_loss(batch: Any, host: Any):
    """``amat run``: the three landmark terms, heatmap BCE or Dice (see :mod:`.runner_loss`)."""
    if landmark_maps(batch) is None:
        return None
    from amat_hooks.integrations.multitask_unet.runner_loss import LandmarkScriptLoss

    options = getattr(host, "options", None)
    return LandmarkScriptLoss(getattr(options, "heatmap_loss", None) or "auto",
                              list(getattr(host, "loss_modules", None) or []))


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.choices.get("run")  # the runner's plugin adds it first (tryfirst)
    if run is not None:
        from amat_hooks.integrations.multitask_unet.runner_loss import HEATMAP_CHOICES

        run.add_argument("--heatmap-loss", choices=HEATMAP_CHOICES, default="auto",
                         help="Multi-Task U-Net scripts: the heatmap term the script trains with. auto "
                              "(default): bce if the script creates an nn.BCELoss, else dice, confirmed by "
                              "the script's first loss before its first optimizer step; dice|bce: refused "
                              "before the first step if the script trains otherwise")
    p = subparsers.add_parser(
        "landmark-data", help="write a generated landmark dataset (CSV or ISBI 2015 challenge layout)",
        description="Write a seeded, generated cephalometric-like landmark dataset, for the example script "
                    "and CI, in this repo's CSV layout (dataset/benchmark/images, points.csv, metadata.yaml, "
                    "senior_csv/) or the ISBI 2015 challenge layout (RawImage/TrainingData/NNN.bmp, "
                    "AnnotationsByMD/400_junior|400_senior/NNN.txt). No downloads.")
    p.add_argument("out", help="folder to create (like ../shared/data/isbi2015_ceph)")
    p.add_argument("--n", type=int, default=40, help="number of images (default 40)")
    p.add_argument("--height", type=int, default=240, help="original image height (default 240)")
    p.add_argument("--width", type=int, default=192, help="original image width (default 192)")
    p.add_argument("--landmarks", type=int, default=19, help="landmarks per image (default 19)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["csv", "isbi2015"], default="csv",
                   help="csv (default): points.csv + senior_csv/; isbi2015: the challenge's folders")
    p.set_defaults(func=_make_data)


def _make_data(args: argparse.Namespace) -> int:
    from amat_hooks.zoo.isbi import write_generated_isbi

    root = write_generated_isbi(args.out, n=args.n, height=args.height, width=args.width,
                                num_landmarks=args.landmarks, seed=args.seed, layout=args.layout)
    print(f"wrote {args.n} generated images with {args.landmarks} landmarks to {root} ({args.layout} layout)")
    return 0


@hookimpl
def amat_tasks():
    from amat_hooks.integrations.multitask_unet.task import LandmarkTask

    return [LandmarkTask()]
