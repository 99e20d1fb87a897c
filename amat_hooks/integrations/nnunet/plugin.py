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

    p = subparsers.add_parser("nnunet-info", help="check that nnU-Net finds the amat-hooks trainers (its own lookup)",
                              description="Checks the nnunetv2 version, the nnUNet_extTrainer registration and "
                                          "that nnU-Net's own by-name lookup (the one nnUNetv2_train and "
                                          "nnUNetv2_predict use) finds the trainers; with trainer names, says "
                                          "what each trains.")
    p.add_argument("names", nargs="*", metavar="TRAINER",
                   help="-tr names to resolve, e.g. nnUNetTrainerAMAT_step0p5_50epochs (default nnUNetTrainerAMAT)")
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
    """Version, registration, and nnU-Net's own lookup of each name (in a fresh process state:
    nnU-Net imports the trainer module and drops it again, as ``nnUNetv2_train`` does)."""
    import contextlib
    import io
    import re

    from amat_hooks.integrations.nnunet import TRAINER_FOLDER
    from amat_hooks.integrations.nnunet.compat import installed_nnunet_version, nnunet_version_problem

    version = installed_nnunet_version()
    problem = nnunet_version_problem(version)
    print(f"nnunetv2: {version or '(not installed)'}" + (f" - {problem}" if problem else ""))
    folders = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    print(f"amat-hooks trainer folder: {TRAINER_FOLDER}")
    print(f"nnUNet_extTrainer: {os.pathsep.join(folders) or '(unset)'}")
    registered = any(os.path.realpath(f) == os.path.realpath(TRAINER_FOLDER) for f in folders)
    print("registered: " + ("yes" if registered else "NO - reinstall amat-hooks (pip install amat-hooks[nnunet]) "
                                                     f"or export nnUNet_extTrainer={TRAINER_FOLDER}"))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    ok = registered
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in args.names or ["nnUNetTrainerAMAT"]:
        chatter = io.StringIO()  # nnU-Net narrates its search: only where it found the class is shown
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                cls = recursive_find_trainer_class_by_name(name)
        except Exception as e:  # nnU-Net's RuntimeError "Could not find ...", or our spelling error
            print(f"nnU-Net's lookup of {name}: NOT FOUND - {' '.join(str(e).split())}")
            ok = False
            continue
        where = re.search(r"Using trainer '.*' from: (.*)$", chatter.getvalue(), re.M)
        folder = where.group(1).strip() if where else os.path.dirname(
            getattr(sys.modules.get(cls.__module__), "__file__", None) or "?")
        what = _describe_trainer(cls)
        print(f"nnU-Net's lookup of {name}: found in {folder}" + (f" - {what}" if what else ""))
    return 0 if ok else 1


def _describe_trainer(cls: type) -> str:
    """What an amat-hooks class trains (empty for other trainers)."""
    if not getattr(cls, "amat_is_nnunet", False):
        return "not an amat-hooks trainer"
    parts = [{"amat": "AMAT", "sat": "SAT", "none": "STD (clean)"}.get(cls.amat_mode, cls.amat_mode)]
    if cls.amat_step is not None:
        parts.append(f"Delta {cls.amat_step:g}")
    elif cls.amat_mode == "amat":
        parts.append("Delta from AMAT_STEP, else guessed from the dataset name")
    if cls.amat_eps is not None:
        parts.append(f"eps {cls.amat_eps:g}")
    elif cls.amat_mode == "sat":
        parts.append("eps from AMAT_EPS")
    if cls.amat_epochs is not None:
        parts.append(f"{cls.amat_epochs} epoch{'' if cls.amat_epochs == 1 else 's'}")
    return ", ".join(parts)
