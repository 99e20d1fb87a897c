"""The nnU-Net task: ``amat calibrate|eval|grid nnunet`` for nnU-Net v2 models (2d and 3d).

Models are addressed as nnU-Net addresses them (``DATASET CONFIGURATION FOLD``, a trainer,
plans, a checkpoint name), read from ``nnUNet_results`` (or, per model, another results
root: ``--models SAT5=nnUNetTrainerSAT@/runs/sat5``). Evaluation and calibration prepare
each sample as nnU-Net's validation pipeline does (:mod:`.slices`): one slice for 2d, one
patch per case for 3d (what training keys a margin by); the grid trains with the real
``nnUNetv2_train -tr nnUNetTrainerAMAT``, one process per Delta. The device defaults as
nnU-Net's ``-device`` does: cuda (here: when there is one, else the CPU, with a note).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from amat_hooks.tasks import CalibrationSet, Task, TaskError, TrainRun


def _preset_for(dataset: str) -> str:
    low = str(dataset).lower()
    for key in ("heart", "hippocampus", "prostate"):
        if key in low:
            return key
    return "hippocampus"


@contextlib.contextmanager
def results_root(path: str | None) -> Iterator[None]:
    """Point nnU-Net at another results folder for one model (``NAME=TRAINER@ROOT``);
    nnU-Net 2.8 reads ``nnUNet_results`` from the environment when a trainer is built."""
    if not path:
        yield
        return
    old = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("nnUNet_results", None)
        else:
            os.environ["nnUNet_results"] = old


def _split_spec(spec: str) -> tuple[str, str | None]:
    trainer, _, root = spec.partition("@")
    return trainer, root or None


def _nnunet_installed() -> None:
    from amat_hooks.integrations.nnunet.compat import installed_nnunet_version, nnunet_version_problem

    problem = nnunet_version_problem(installed_nnunet_version())
    if problem:
        raise TaskError(problem)


def resolve_device(requested: str | None, log=None) -> str:
    """nnU-Net's ``-device`` default is cuda; without a CUDA device that would fail, so the
    CPU is used instead and a note says so (``-device cpu`` silences it)."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
        "note: no CUDA device found: running on the CPU (nnU-Net's default -device is cuda; pass -device cpu "
        "to say so)")
    return "cpu"


class NnUNetTask(Task):
    """2D nnU-Net models in nnU-Net results folders."""

    name = "nnunet"
    help = ("nnU-Net v2 models: ADI/TVDI of 2d slices (or 3d patches, one per case) under L2 PGD and IFGSM "
            "(paper Tables 1-3)")
    default_levels = "hippocampus"
    xi_rule = "mean"  # paper section 3.5
    model_spec_help = "TRAINER[@RESULTS_ROOT]"
    default_models = "STD=nnUNetTrainerSTD,AMAT=nnUNetTrainerAMAT"

    def add_arguments(self, p: argparse.ArgumentParser, command: str) -> None:
        p.add_argument("dataset", help="dataset name or id, as for nnUNetv2_train")
        p.add_argument("configuration", help="2d (samples are slices) or a 3d configuration (one patch per case)")
        p.add_argument("fold", help="fold (0-4 or all)")
        p.add_argument("-p", "--plans", dest="plans", default="nnUNetPlans", help="plans identifier")
        p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file in the fold folder")
        p.add_argument("-device", "--device", dest="device", default=None, choices=["cpu", "cuda", "mps"],
                       help="as nnUNetv2_train's -device (default cuda; the CPU, with a note, where there is no "
                            "CUDA device)")
        if command == "calibrate":
            p.add_argument("-tr", dest="trainer", default="nnUNetTrainerSTD", help="trainer of the clean model")
            p.add_argument("--batch-size", type=int, default=None, help="samples per forward pass (default: plans)")
            p.add_argument("--max-cases", type=int, default=None, help="score only the first N training cases")
            return
        p.add_argument("--split", default="val", choices=["val", "test"],
                       help="val: the fold's validation cases; test: imagesTs/labelsTs of the raw dataset")
        p.add_argument("--batch-size", type=int, default=None,
                       help="samples per attack batch (default: 16 slices for 2d, the plans' batch size for 3d)")
        p.add_argument("--include-empty", action="store_true", help="also score samples without foreground")
        p.add_argument("--max-cases", type=int, help="evaluate only the first N cases (CPU budgets)")
        p.add_argument("--max-slices", type=int, help="evaluate only the first N slices")
        if command == "grid":
            p.add_argument("--epochs", type=int, default=5)
            p.add_argument("--iters", type=int, default=50)
            p.add_argument("--adv-steps", type=int, default=10)
            p.add_argument("--pretrained-weights", default=None, metavar="CHECKPOINT",
                           help="start every grid run from these weights (nnUNetv2_train -pretrained_weights)")

    def check(self, args: argparse.Namespace, command: str) -> None:
        _nnunet_installed()
        args.device = resolve_device(args.device)
        if command == "grid":
            args.split = "val"

    # -- eval ---------------------------------------------------------------------------------
    def default_model_name(self, spec: str) -> str:
        trainer, _ = _split_spec(spec)
        return trainer.replace("nnUNetTrainer", "") or trainer

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        from amat_hooks.integrations.nnunet.evaluate import checkpoint_path

        trainer, root = _split_spec(spec)
        with results_root(root):
            ckpt = checkpoint_path(args.dataset, args.configuration, args.fold, trainer, args.plans, args.checkpoint)
        if ckpt is not None and not ckpt.is_file():
            raise TaskError(f"model {name}: no checkpoint {ckpt}; train the model first: nnUNetv2_train "
                            f"{args.dataset} {args.configuration} {args.fold} -tr {trainer}")

    def eval_task(self, name: str, spec: str, args: argparse.Namespace):
        from amat_hooks.integrations.nnunet.evaluate import NnUNetSliceEvalTask, load_trainer

        trainer_name, root = _split_spec(spec)
        with results_root(root):
            trainer = load_trainer(args.dataset, args.configuration, args.fold, trainer_name, args.plans,
                                   args.checkpoint, args.device)
        return NnUNetSliceEvalTask(trainer, split=args.split, batch_size=args.batch_size,
                                   include_empty=args.include_empty, max_cases=args.max_cases,
                                   max_slices=args.max_slices,
                                   every_class=getattr(args, "protocol", "paper") == "authors")

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        from amat_hooks.integrations.nnunet.evaluate import checkpoint_path

        trainer, root = _split_spec(spec)
        with results_root(root):
            return checkpoint_path(args.dataset, args.configuration, args.fold, trainer, args.plans, args.checkpoint)

    def title(self, args: argparse.Namespace) -> str:
        unit = "slices" if args.configuration == "2d" else "cases (one patch each)"
        return f"nnU-Net {args.dataset} {args.configuration} fold {args.fold}, {args.split} {unit}"

    # -- calibrate ----------------------------------------------------------------------------
    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        """Every training sample of the fold (empty ones too: each slice for 2d, one patch per
        case for 3d), prepared as nnU-Net's validation prepares a sample, scored by the
        trainer's own loss: the terms AMAT compares with xi."""
        from amat_hooks.integrations.nnunet.evaluate import NnUNetSliceEvalTask, load_trainer
        from amat_hooks.integrations.nnunet.settings import default_xi_path
        from amat_hooks.state import StateError, read_state

        trainer = load_trainer(args.dataset, args.configuration, args.fold, args.trainer, args.plans,
                               args.checkpoint, args.device, missing="clean model")
        ckpt = Path(trainer.output_folder) / args.checkpoint
        try:
            mode = (read_state(ckpt).get("host_state") or {}).get("mode")
        except StateError:
            mode = None
        if mode not in (None, "none"):
            log(f"WARNING: {ckpt} was trained adversarially (mode {mode!r}); the paper calibrates xi on a "
                f"clean (STD) model")
        task = NnUNetSliceEvalTask(trainer, split="train", batch_size=args.batch_size or
                                   int(trainer.configuration_manager.batch_size), include_empty=True,
                                   max_cases=args.max_cases)
        pm = trainer.plans_manager
        log(f"calibrating xi on {task.describe_scored(len(task._slices))} of {pm.dataset_name} "
            f"({args.configuration}, fold {args.fold}) with {ckpt}")
        return CalibrationSet(
            task=task, identity={"dataset": pm.dataset_name, "configuration": args.configuration, "plans": pm.plans_name},
            source={"fold": str(args.fold), "trainer": args.trainer, "checkpoint": str(ckpt),
                    "n_cases": len({key.rsplit(":", 1)[0] for key, *_ in task._slices})},
            default_path=default_xi_path(trainer.preprocessed_dataset_folder_base, args.configuration, pm.plans_name,
                                         args.fold))

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        from amat_hooks.integrations.nnunet.settings import default_xi_path

        here = Path(path) == Path(default_xi_path(Path(path).parent, args.configuration,
                                                   args.plans, args.fold))
        use = ("nnUNetv2_train ... -tr nnUNetTrainerAMAT finds it there" if here else
               f"train with AMAT_XI_FILE={path} nnUNetv2_train ... -tr nnUNetTrainerAMAT")
        return f"{use} (or AMAT_XI={xi[0]:.6g})"

    # -- grid ---------------------------------------------------------------------------------
    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        env = {"nnUNet_results": str(folder / "results"), "AMAT_STEP": f"{delta:g}",
               "AMAT_EPOCHS": str(args.epochs), "AMAT_ITERS": str(args.iters), "AMAT_VAL_ITERS": "1",
               "AMAT_STEPS": str(args.adv_steps)}
        exe = Path(sys.executable).with_name("nnUNetv2_train")
        cmd = [str(exe), str(args.dataset), args.configuration, str(args.fold), "-tr", "nnUNetTrainerAMAT",
               "-p", args.plans, "-device", args.device]
        if args.pretrained_weights:
            cmd += ["-pretrained_weights", str(args.pretrained_weights)]
        root = folder / "results"
        return TrainRun(cmd=cmd, env=env, artefact=lambda: root if root.is_dir() else None)

    def grid_eval_task(self, artefact: Path, args: argparse.Namespace):
        return self.eval_task("AMAT", f"nnUNetTrainerAMAT@{artefact}", args)
