"""Plugin module: ``amat eval nnunet``, ``amat grid nnunet`` and the nnU-Net demo backend.

Everything runs through nnU-Net's own console scripts and results folders; the
evaluation itself is the core's (:mod:`amat_hooks.commands`, :mod:`amat_hooks.evaluation`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from ...hookspecs import hookimpl


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


def parse_models(text: str) -> dict[str, tuple[str, str | None]]:
    """``STD=nnUNetTrainerSTD,SAT5=nnUNetTrainerSAT@/runs/sat5,nnUNetTrainerAMAT``."""
    out: dict[str, tuple[str, str | None]] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, spec = item.rpartition("=")
        trainer, _, root = spec.partition("@")
        if not name:
            name = trainer.replace("nnUNetTrainer", "") or trainer
        out[name] = (trainer, root or None)
    if not out:
        raise argparse.ArgumentTypeError("--models needs at least one NAME=TRAINER[@RESULTS_ROOT]")
    return out


def _task_factory(args, trainer_name: str, root: str | None, margins_sink: dict, name: str):
    def make():
        from .evaluate import NnUNetSliceEvalTask, load_trainer, margins_of

        with results_root(root):
            trainer = load_trainer(args.dataset, args.configuration, args.fold, trainer_name, args.plans,
                                   args.checkpoint, args.device)
        m = margins_of(trainer)
        if m:
            margins_sink[name] = m
        return NnUNetSliceEvalTask(trainer, split=args.split, batch_size=args.batch_size,
                                   include_empty=args.include_empty, max_cases=args.max_cases,
                                   max_slices=args.max_slices)
    return make


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset name or id, as for nnUNetv2_train")
    p.add_argument("configuration", help="2d (samples are slices)")
    p.add_argument("fold")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--device", default="cpu")
    p.add_argument("--split", default="val", choices=["val", "test"],
                   help="val: the fold's validation cases; test: imagesTs/labelsTs of the raw dataset")
    p.add_argument("--batch-size", type=int, default=16, help="slices per attack batch")
    p.add_argument("--include-empty", action="store_true", help="also score slices without foreground")
    p.add_argument("--max-cases", type=int, help="evaluate only the first N cases (CPU budgets)")
    p.add_argument("--max-slices", type=int, help="evaluate only the first N slices")


def _eval(args: argparse.Namespace) -> int:
    from ...commands import run_evaluations

    margins: dict[str, list[float]] = {}
    models = parse_models(args.models)
    tasks = {name: _task_factory(args, tr, root, margins, name) for name, (tr, root) in models.items()}
    title = f"nnU-Net {args.dataset} {args.configuration} fold {args.fold}, {args.split} slices"
    results = run_evaluations(tasks, args, title=title)
    if margins:
        from ...report import plot_margin_histogram

        for name, values in margins.items():
            path = plot_margin_histogram(values, Path(args.out) / f"{args.name}_{name}_margins.png",
                                         title=f"{name} margins")
            print(f"margin histogram: {path}")
    return 0 if results else 1


def train_amat(dataset: str, configuration: str, fold: str, delta: float, folder: Path, epochs: int,
               iters: int, steps: int, extra_env: dict | None = None, plans: str = "nnUNetPlans",
               pretrained_weights: str | None = None) -> Path:
    """One AMAT training with ``nnUNetv2_train`` into ``folder/results``; returns that root."""
    env = {**os.environ, "nnUNet_results": str(folder / "results"), "AMAT_STEP": f"{delta:g}",
           "AMAT_EPOCHS": str(epochs), "AMAT_ITERS": str(iters), "AMAT_VAL_ITERS": "1",
           "AMAT_STEPS": str(steps), **(extra_env or {})}
    exe = Path(sys.executable).with_name("nnUNetv2_train")
    cmd = [str(exe), str(dataset), configuration, str(fold), "-tr", "nnUNetTrainerAMAT", "-p", plans, "-device", "cpu"]
    if pretrained_weights:
        cmd += ["-pretrained_weights", str(pretrained_weights)]
    log = folder / "train.log"
    folder.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError(f"nnUNetv2_train failed for Delta={delta:g} (exit {p.returncode}); see {log}")
    return folder / "results"


def _grid(args: argparse.Namespace) -> int:
    from ...commands import run_grid

    deltas = [float(v) for v in args.deltas.split(",") if v.strip()]
    if not deltas or any(d <= 0 for d in deltas):
        raise SystemExit(f"--deltas must be positive numbers, got {args.deltas!r}")
    args.split = "val"

    def train(delta: float, folder: Path) -> Path:
        return train_amat(args.dataset, args.configuration, args.fold, delta, folder, args.epochs, args.iters,
                          args.adv_steps, plans=args.plans, pretrained_weights=args.pretrained_weights)

    def task_for(root: Path):
        return _task_factory(args, "nnUNetTrainerAMAT", str(root), {}, "AMAT")()

    run_grid(deltas, train, task_for, args)
    return 0


@hookimpl
def amat_add_task_commands(command: str, subparsers: argparse._SubParsersAction) -> None:
    from ...commands import add_eval_arguments

    if command == "eval":
        p = subparsers.add_parser("nnunet", help="robustness of trained 2D nnU-Net models (ADI/TVDI)",
                                  description="Evaluate nnU-Net results folders under 100-step PGD and "
                                              "10-step IFGSM; writes a paper-style report.")
        _add_model_args(p)
        p.add_argument("--models", default="STD=nnUNetTrainerSTD,AMAT=nnUNetTrainerAMAT",
                       help="NAME=TRAINER[@RESULTS_ROOT],... (a results root per model lets two SAT "
                            "runs with different eps sit side by side)")
        add_eval_arguments(p, default_levels="hippocampus")
        p.set_defaults(func=_eval)
    elif command == "grid":
        p = subparsers.add_parser("nnunet", help="choose AMAT's Delta for an nnU-Net dataset",
                                  description="Train nnUNetTrainerAMAT once per Delta (fixed budget) and "
                                              "compare on the fold's validation split (paper Appendix A).")
        _add_model_args(p)
        p.add_argument("--deltas", required=True, help="comma-separated step sizes, e.g. 0.1,0.5,1")
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--iters", type=int, default=50)
        p.add_argument("--adv-steps", type=int, default=10)
        p.add_argument("--pretrained-weights", default=None, metavar="CHECKPOINT",
                       help="start every grid run from these weights (nnUNetv2_train -pretrained_weights)")
        add_eval_arguments(p, default_levels="hippocampus")
        p.set_defaults(func=_grid, out="amat_out/grid")


@hookimpl
def amat_demo_backends() -> dict:
    from .demo import run_nnunet_demo

    return {"nnunet": ("the real nnU-Net trainer (nnUNetv2_train) on generated 2D data, ~15 min",
                       run_nnunet_demo)}
