"""The landmark task: ``amat calibrate|eval|grid landmark`` for Multi-Task U-Nets.

Checkpoints of the example script (``examples/landmark/train.py``) and of
:class:`.model.MultiTaskUNet` load alike. Evaluation: MRE (mm, original resolution) and SDR
under L2 PGD / IFGSM on the three loss terms (paper Table 6). The grid trains the user's
script once per Delta through ``amat run``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ...evaluation import EvalBatch, EvalTask
from ...tasks import CalibrationSet, Task, TaskError, TrainRun, amat_executable


def load_model(checkpoint: str | Path, in_channels: int = 3) -> nn.Module:
    """A :class:`MultiTaskUNet` from a state_dict file (``module.`` prefixes of
    DataParallel are dropped; the landmark count comes from the head's shape)."""
    from .model import MultiTaskUNet

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    if "final.weight" not in state:
        raise TaskError(f"{path} is not a Multi-Task U-Net state_dict (no 'final.weight'); save "
                        f"net.state_dict() of examples/landmark/network.py or MultiTaskUNet")
    n = state["final.weight"].shape[0] // 3
    model = MultiTaskUNet(num_landmarks=n, in_channels=in_channels)
    model.load_state_dict(state)
    return model.eval()


class LandmarkEvalTask(EvalTask):
    """MRE (mm, original resolution) and SDR of a Multi-Task U-Net on a LandmarkDataset."""

    name = "landmark"
    metric = "MRE"
    higher_is_better = False
    bounds = (-1.0, 1.0)  # images are normalised to [-1, 1]

    def __init__(self, model: nn.Module, dataset: Any, batch_size: int = 4, heatmap_loss: str = "dice") -> None:
        self.model = model
        self.dataset = dataset
        self.batch_size = batch_size
        self.heatmap_loss = heatmap_loss

    def size(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def describe_scored(self, samples: int) -> str:
        return f"{samples} images"

    def batches(self) -> Iterable[EvalBatch]:
        for start in range(0, len(self.dataset), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(self.dataset)))
            items = [self.dataset[i] for i in idx]
            cols = [torch.stack([it[k] for it in items]) for k in range(6)]
            key = ",".join(self.dataset.names[i] for i in idx)
            yield EvalBatch(key=key, x=cols[0], target=tuple(cols[1:]))

    def loss_terms(self, x: Tensor, target: Any, repeats: int) -> Tensor:
        from .losses import landmark_terms

        mask, heat, oy, ox, _ = (t.repeat(repeats, *([1] * (t.dim() - 1))) for t in target)
        return landmark_terms(self.model(x), mask, heat, oy, ox, heatmap_loss=self.heatmap_loss)

    def measure(self, x: Tensor, target: Any) -> list[list[float]]:
        from ...metrics import radial_errors_mm
        from .voting import voting

        heat, oy, ox = self.model(x)
        pred = voting(heat, oy, ox, self.dataset.radius)
        return radial_errors_mm(pred, target[4], **self.dataset.to_original_mm()).tolist()

    def reduce(self, stats: list[Any]) -> dict[str, float]:
        from ...metrics import mre, sdr

        errors = torch.tensor([row for batch in stats for row in batch], dtype=torch.float64)
        out = {"MRE": mre(errors)}
        out.update({f"SDR{r:g}mm": v for r, v in sdr(errors).items()})
        return out


class LandmarkTask(Task):
    """Multi-Task U-Net checkpoints on an ISBI 2015 folder (or a generated one)."""

    name = "landmark"
    help = "Multi-Task U-Net landmarks: MRE/SDR (mm) under L2 PGD and IFGSM (paper Table 6)"
    default_levels = "landmark"
    xi_rule = "mean+2std"  # paper section 3.6
    model_spec_help = "CHECKPOINT"
    accepts_extra = True   # the grid's training command after --

    _SPLIT = {"calibrate": "train", "eval": "test", "grid": "val"}

    def add_arguments(self, p: argparse.ArgumentParser, command: str) -> None:
        g = p.add_argument_group("landmark data")
        if command == "calibrate":
            g.add_argument("--checkpoint", required=True,
                           help="state_dict of a clean Multi-Task U-Net (e.g. model_epoch_499.pth)")
        g.add_argument("--data", required=True,
                       help="ISBI 2015 folder (../shared/data/isbi2015_ceph) or a generated one")
        split = self._SPLIT[command]
        g.add_argument("--split", default=split, help=f"train, val, test or all (default {split}; paper split)")
        g.add_argument("--size", type=int, nargs=2, default=[200, 160], metavar=("H", "W"))
        g.add_argument("--annotation", default="mean", choices=["mean", "points", "senior"])
        g.add_argument("--heatmap-loss", default="dice", choices=["dice", "bce"])
        g.add_argument("--batch-size", type=int, default=4)
        g.add_argument("--max-images", type=int, default=None)
        if command == "grid":
            t = p.add_argument_group("training per Delta (passed to amat run)")
            t.add_argument("--adv-xi-rule", default="mean+2std", choices=["mean", "mean+2std"])
            t.add_argument("--adv-xi", default=None, help="fixed xi a,b,c (from amat calibrate landmark)")
            t.add_argument("--adv-xi-file", default=None, help="xi file from amat calibrate landmark")
            t.add_argument("--adv-steps", type=int, default=None, help="PGD iterations for training noise")
            t.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT.py ... --out {out}")

    def check(self, args: argparse.Namespace, command: str) -> None:
        if command == "grid":
            cmd = self._script(args)
            if not cmd:
                raise TaskError("give the training command after --, e.g. -- python examples/landmark/train.py "
                                "--data DATA --epochs 50 --out {out}")
            if not any("{out}" in w for w in cmd):
                raise TaskError("the training command must contain {out} where the script's output folder "
                                "goes (e.g. --out {out}); each Delta trains into its own folder")
        if command == "calibrate" and not Path(args.checkpoint).is_file():
            raise TaskError(f"checkpoint not found: {args.checkpoint}")

    # -- eval ---------------------------------------------------------------------------------
    def default_model_name(self, spec: str) -> str:
        return Path(spec).parent.name or Path(spec).stem

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        if not Path(spec).is_file():
            raise TaskError(f"checkpoint not found: {spec} (model {name})")

    def eval_task(self, name: str, spec: str, args: argparse.Namespace) -> LandmarkEvalTask:
        model = load_model(spec)
        return LandmarkEvalTask(model, self._dataset(args, model.num_landmarks), args.batch_size,
                                args.heatmap_loss)

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        from ..runner import SIDECAR_SUFFIX

        side = Path(spec + SIDECAR_SUFFIX)
        return side if side.is_file() else None

    def title(self, args: argparse.Namespace) -> str:
        return f"Multi-Task U-Net, {args.split} split (MRE, mm; lower is better)"

    # -- calibrate ----------------------------------------------------------------------------
    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        from .losses import TERM_NAMES

        model = load_model(args.checkpoint)
        ds = self._dataset(args, model.num_landmarks)
        task = LandmarkEvalTask(model, ds, args.batch_size, args.heatmap_loss)
        with torch.no_grad():
            terms = torch.cat([task.loss_terms(b.x, b.target, 1) for b in task.batches()])
        return CalibrationSet(terms=terms, term_names=list(TERM_NAMES),
                              identity={"heatmap_loss": args.heatmap_loss},
                              source={"checkpoint": str(args.checkpoint), "data": str(args.data),
                                      "split": args.split, "annotation": ds.annotation_used})

    def default_xi_path(self, args: argparse.Namespace, calibration: CalibrationSet) -> Path:
        return Path(args.checkpoint).with_name("amat_xi_landmark.json")

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        return (f"use: amat run --adv amat --adv-step 1 --adv-xi-file {path} --heatmap-loss {args.heatmap_loss} "
                f"-- python ...   (or --adv-xi {','.join(f'{v:.6g}' for v in xi)})")

    # -- grid ---------------------------------------------------------------------------------
    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        flags = ["--adv", "amat", "--adv-step", f"{delta:g}", "--heatmap-loss", args.heatmap_loss]
        if args.adv_xi_file:
            flags += ["--adv-xi-file", args.adv_xi_file]
        elif args.adv_xi:
            flags += ["--adv-xi", args.adv_xi]
        else:
            flags += ["--adv-xi-rule", args.adv_xi_rule]
        if args.adv_steps:
            flags += ["--adv-steps", str(args.adv_steps)]
        run_dir = folder / "run"
        cmd = [*amat_executable(), "run", *flags, "--",
               *[w.replace("{out}", str(run_dir)) for w in self._script(args)]]

        def checkpoint() -> Path | None:
            from ...atomic_files import read_json

            state = run_dir / "amat_state.json"
            ckpt = read_json(state).get("checkpoint") if state.is_file() else None
            return Path(ckpt) if ckpt and Path(ckpt).is_file() else None

        return TrainRun(cmd=cmd, artefact=checkpoint)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _script(args: argparse.Namespace) -> list[str]:
        cmd = list(getattr(args, "command", None) or []) + [w for w in getattr(args, "extra", []) or []]
        return cmd[1:] if cmd and cmd[0] == "--" else cmd

    def _dataset(self, args: argparse.Namespace, num_landmarks: int):
        from .data import LandmarkDataset

        key = (args.data, args.split, tuple(args.size), args.annotation, num_landmarks, args.max_images)
        cache = getattr(self, "_datasets", {})
        if key not in cache:
            ds = LandmarkDataset(args.data, args.split, size=tuple(args.size), annotation=args.annotation,
                                 num_landmarks=num_landmarks, max_images=args.max_images)
            print(f"{args.split}: {len(ds)} images, annotation: {ds.annotation_used}", file=sys.stderr)
            cache[key] = ds
            self._datasets = cache
        return cache[key]
