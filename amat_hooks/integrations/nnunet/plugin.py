"""The nnU-Net plugin: the task (``amat calibrate|eval|grid nnunet``), the demo back end and
the ``amat nnunet-*`` commands. The trainers (:mod:`.trainer`) build their own adapter
(:class:`~.adapter.NnUNetAdapter`); nnU-Net itself is imported lazily, so ``amat`` works
(and says what is missing) without it.
"""
from __future__ import annotations

import argparse
import os
import sys

from amat_hooks.hookspecs import hookimpl


# -- the task and the demo back end -------------------------------------------------------------
@hookimpl
def amat_tasks():
    from amat_hooks.integrations.nnunet.task import NnUNetTask

    return [NnUNetTask()]


@hookimpl
def amat_demo_backends() -> dict:
    from amat_hooks.demo.nnunet import run_nnunet_demo

    return {"nnunet": ("the real nnU-Net trainer (nnUNetv2_train) on generated 2D data, ~15 min",
                       run_nnunet_demo)}


# -- commands ----------------------------------------------------------------------------------
@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("nnunet-hippocampus", help="convert MSD Hippocampus to nnU-Net raw format "
                                                         "with the paper's 208/17/35 split",
                              description="Convert ../shared/data/msd_hippocampus (MSD Task04) to nnU-Net raw "
                                          "format: dataset.json, imagesTr/labelsTr (208 train + 17 val), "
                                          "imagesTs/labelsTs (35 test) and splits_final.json (fold 0).")
    p.add_argument("--src", default=None, help="MSD folder with imagesTr/labelsTr "
                                               "(default: ../shared/data/msd_hippocampus)")
    p.add_argument("--id", type=int, default=4, help="nnU-Net dataset id (default 4)")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--preprocessed", default=None, help="nnU-Net preprocessed folder for splits_final.json "
                                                        "(default $nnUNet_preprocessed if set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="208,17,35", metavar="TRAIN,VAL,TEST",
                   help="case counts (default the paper's 208,17,35; smaller counts take the first cases of "
                        "the same seeded permutation)")
    p.set_defaults(func=_convert_hippocampus)

    p = subparsers.add_parser("nnunet-generate", help="write a small generated 2D dataset in nnU-Net raw format",
                              description="Seeded generated dataset (ellipses + distractor + noise) for tests, "
                                          "benchmarks and trying the nnU-Net trainers without data.")
    p.add_argument("--id", type=int, default=990)
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)

    p = subparsers.add_parser("nnunet-info", help="show where nnU-Net finds the amat-hooks trainers")
    p.set_defaults(func=_info)


def _need(var: str, given: str | None) -> str:
    value = given or os.environ.get(var)
    if not value:
        raise SystemExit(f"error: set {var} (nnU-Net's folder variable) or pass the folder explicitly")
    return value


def _convert_hippocampus(args: argparse.Namespace) -> int:
    from pathlib import Path

    from amat_hooks.zoo.nnunet_data import convert_hippocampus

    src = args.src or str(Path.cwd().parent / "shared" / "data" / "msd_hippocampus")
    try:
        split = tuple(int(v) for v in args.split.split(","))
        if len(split) != 3:
            raise ValueError(f"--split takes three counts TRAIN,VAL,TEST, got {args.split!r}")
        info = convert_hippocampus(src, _need("nnUNet_raw", args.raw), dataset_id=args.id,
                                   preprocessed_root=args.preprocessed or os.environ.get("nnUNet_preprocessed"),
                                   seed=args.seed, split=split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['folder']}: {info['train']} train / {info['val']} val / {info['test']} test; "
          f"splits: {', '.join(info['splits'])}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.id} -c 2d --verify_dataset_integrity")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from amat_hooks.zoo.nnunet_data import make_generated_dataset

    folder = make_generated_dataset(_need("nnUNet_raw", args.raw), dataset_id=args.id, cases=args.cases,
                                    slices=args.slices, size=args.size, seed=args.seed)
    print(f"wrote {folder}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.id} -c 2d")
    return 0


def _info(args: argparse.Namespace) -> int:
    from amat_hooks.integrations.nnunet import TRAINER_FOLDER

    folders = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    print(f"amat-hooks trainer folder: {TRAINER_FOLDER}")
    print(f"nnUNet_extTrainer: {os.pathsep.join(folders) or '(unset)'}")
    ok = any(os.path.realpath(f) == os.path.realpath(TRAINER_FOLDER) for f in folders)
    print("registered: " + ("yes" if ok else "NO - reinstall amat-hooks (pip install amat-hooks[nnunet]) or "
                                           f"export nnUNet_extTrainer={TRAINER_FOLDER}"))
    return 0 if ok else 1
