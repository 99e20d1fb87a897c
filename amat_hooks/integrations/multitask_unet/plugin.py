"""The Multi-Task U-Net plugin: its adapter for generic hosts (``amat run``, the plain loop),
the ``--heatmap-loss`` flag of ``amat run``, ``amat landmark-data`` and the landmark task."""
from __future__ import annotations

import argparse
from typing import Any

from amat_hooks.hookspecs import hookimpl
from amat_hooks.integrations.multitask_unet.adapter import HEATMAP_CHOICES, LandmarkAdapter, landmark_maps


@hookimpl
def amat_adapter(batch: Any, host: Any) -> LandmarkAdapter | None:
    """Landmark batches: the heatmap term from ``amat run --heatmap-loss`` (default auto:
    inferred from the script's loss modules), or a host's ``landmark_heatmap_loss``."""
    if landmark_maps(batch) is None:
        return None
    flag = getattr(getattr(host, "options", None), "heatmap_loss", None)
    kind = flag or getattr(host, "landmark_heatmap_loss", None) or "auto"
    return LandmarkAdapter(kind, list(getattr(host, "loss_modules", None) or []),
                           given_by="--heatmap-loss" if flag else "the host's landmark_heatmap_loss")


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.choices.get("run")  # the runner's plugin adds it first (tryfirst)
    if run is not None:
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
    from amat_hooks.zoo.isbi_writers import write_generated_isbi

    root = write_generated_isbi(args.out, n=args.n, height=args.height, width=args.width,
                                num_landmarks=args.landmarks, seed=args.seed, layout=args.layout)
    print(f"wrote {args.n} generated images with {args.landmarks} landmarks to {root} ({args.layout} layout)")
    return 0


@hookimpl
def amat_tasks():
    from amat_hooks.integrations.multitask_unet.task import LandmarkTask

    return [LandmarkTask()]
