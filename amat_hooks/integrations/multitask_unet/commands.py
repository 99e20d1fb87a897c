"""``amat calibrate landmark`` and ``amat eval landmark``: xi from a clean model, and MRE /
SDR under 100-step L2 PGD / 10-step IFGSM (paper Table 6), through the core's
:func:`~amat_hooks.evaluation.robustness_eval`. Checkpoints of the example script
(``examples/landmark/train.py``) and of :class:`.model.MultiTaskUNet` load alike."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ...evaluation import EvalBatch, EvalTask


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
        raise ValueError(f"{path} is not a Multi-Task U-Net state_dict (no 'final.weight'); save "
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


def _dataset_args(p: argparse.ArgumentParser, split: str, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", required=True,
                       help="state_dict of a Multi-Task U-Net (e.g. model_epoch_499.pth)")
    p.add_argument("--data", required=True, help="ISBI 2015 folder (../shared/data/isbi2015_ceph) or a generated one")
    p.add_argument("--split", default=split, help=f"train, val, test or all (default {split}; paper split)")
    p.add_argument("--size", type=int, nargs=2, default=[200, 160], metavar=("H", "W"))
    p.add_argument("--annotation", default="mean", choices=["mean", "points", "senior"])
    p.add_argument("--heatmap-loss", default="dice", choices=["dice", "bce"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-images", type=int, default=None)


def add_task_commands(command: str, subparsers: argparse._SubParsersAction) -> None:
    from ...commands import add_eval_arguments

    if command == "calibrate":
        p = subparsers.add_parser(
            "landmark", help="xi for the 3 landmark loss terms from a clean Multi-Task U-Net",
            description="Per-sample loss terms (heatmap, offset x, offset y) of a clean (STD) model on "
                        "the training split and xi = mean or mean+2std per term (the paper: mean+2std).")
        _dataset_args(p, "train")
        p.add_argument("--rule", default="mean+2std", choices=["mean", "mean+2std"])
        p.add_argument("--out", default=None, help="JSON file to write (atomically)")
        p.set_defaults(func=_calibrate)
    elif command == "eval":
        p = subparsers.add_parser(
            "landmark", help="MRE/SDR (mm) of Multi-Task U-Nets under L2 PGD and IFGSM (paper Table 6)",
            description="MRE in mm at the original resolution and SDR at 2/2.5/3/4 mm, clean and under "
                        "white-box 100-step L2 PGD / 10-step IFGSM on the three loss terms, models side by side.",
            epilog="e.g. amat eval landmark --models STD=runs/std/model_epoch_499.pth,AMAT=runs/amat/"
                   "model_epoch_499.pth --data ../shared/data/isbi2015_ceph --split test")
        p.add_argument("--models", required=True,
                       help="NAME=CHECKPOINT[,NAME=CHECKPOINT...] (a bare path is named after its folder)")
        _dataset_args(p, "test", checkpoint=False)
        add_eval_arguments(p, default_levels="landmark")
        p.set_defaults(func=_eval, out="amat_out/eval_landmark")
    elif command == "grid":
        p = subparsers.add_parser(
            "landmark", help="choose AMAT's Delta: `amat run` the training script per Delta, MRE on val",
            description="Train the script once per Delta through `amat run --adv amat --adv-step D` (fixed "
                        "budget) and compare the final checkpoints on the validation split under 100-step PGD "
                        "(paper Appendix A, Table 11). The script command follows `--`; write {out} where its "
                        "output folder goes. Finished grid points are not retrained.",
            epilog="e.g. amat grid landmark --deltas 0.5,1,2 --data DATA --adv-xi-rule mean+2std -- python "
                   "examples/landmark/train.py --data DATA --heatmap-loss dice --epochs 50 --out {out}")
        p.add_argument("--deltas", required=True, help="comma-separated AMAT step sizes, e.g. 0.5,1,2")
        p.add_argument("--adv-xi-rule", default="mean+2std", choices=["mean", "mean+2std"])
        p.add_argument("--adv-xi", default=None, help="fixed xi a,b,c (from amat calibrate landmark)")
        p.add_argument("--adv-steps", type=int, default=None, help="PGD iterations for training noise")
        _dataset_args(p, "val", checkpoint=False)
        add_eval_arguments(p, default_levels="landmark")
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT.py ... --out {out}")
        p.set_defaults(func=_grid, out="amat_out/grid_landmark")


def _dataset(args: argparse.Namespace, num_landmarks: int):
    from .data import LandmarkDataset

    ds = LandmarkDataset(args.data, args.split, size=tuple(args.size), annotation=args.annotation,
                         num_landmarks=num_landmarks, max_images=args.max_images)
    print(f"{args.split}: {len(ds)} images, annotation: {ds.annotation_used}", file=sys.stderr)
    return ds


def _fail(command: str, message: str) -> int:
    print(f"amat {command} landmark: error: {message}", file=sys.stderr)
    return 2


def _calibrate(args: argparse.Namespace) -> int:
    from ...io import atomic_write_json
    from ...thresholds import xi_from_losses
    from .losses import TERM_NAMES

    try:
        model = load_model(args.checkpoint)
        ds = _dataset(args, model.num_landmarks)
    except (FileNotFoundError, ValueError) as e:
        return _fail("calibrate", str(e))
    task = LandmarkEvalTask(model, ds, args.batch_size, args.heatmap_loss)
    rows = []
    with torch.no_grad():
        for b in task.batches():
            rows.append(task.loss_terms(b.x, b.target, 1))
    terms = torch.cat(rows)
    xi = xi_from_losses(terms, args.rule).tolist()
    text = ",".join(f"{v:.6g}" for v in xi)
    print(f"xi ({args.rule}; {', '.join(TERM_NAMES)}) over {terms.shape[0]} images: {text}")
    print(f"use: amat run --adv amat --adv-step 1 --adv-xi {text} --heatmap-loss {args.heatmap_loss} -- python ...")
    if args.out:
        atomic_write_json(args.out, {"xi": xi, "rule": args.rule, "term_names": list(TERM_NAMES),
                                     "heatmap_loss": args.heatmap_loss, "checkpoint": str(args.checkpoint),
                                     "images": terms.shape[0], "annotation": ds.annotation_used})
    return 0


def sidecar_margins(checkpoint: Path) -> list[float] | None:
    """Margins that `amat run` wrote next to a checkpoint (``CKPT.amat.json``), if any."""
    from ...io import read_json

    side = Path(str(checkpoint) + ".amat.json")
    if not side.is_file():
        return None
    pol = read_json(side).get("engine", {}).get("policy", {})
    return list(pol.get("margins", {}).get("values", [])) or None


def _eval(args: argparse.Namespace) -> int:
    from ...commands import parse_model_spec, run_evaluations
    from ...evaluation import check_levels
    from ...report import plot_margin_histogram

    try:
        models = dict(parse_model_spec(m) for m in args.models.split(",") if m.strip())
        for name, path in models.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"checkpoint not found: {path} (model {name})")
        check_levels(args.levels)
        loaded = {name: load_model(path) for name, path in models.items()}
        n = {m.num_landmarks for m in loaded.values()}
        if len(n) != 1:
            raise ValueError(f"the models predict different numbers of landmarks: {sorted(n)}")
        ds = _dataset(args, n.pop())
    except (FileNotFoundError, ValueError) as e:
        return _fail("eval", str(e))
    tasks = {name: (lambda m=m: LandmarkEvalTask(m, ds, args.batch_size, args.heatmap_loss))
             for name, m in loaded.items()}
    run_evaluations(tasks, args, title=f"Multi-Task U-Net, {args.split} split (MRE, mm; lower is better)")
    for name, path in models.items():
        values = sidecar_margins(Path(path))
        if values:
            out = plot_margin_histogram(values, Path(args.out) / f"{args.name}_{name}_margins.png",
                                        title=f"{name} margins")
            print(f"margin histogram: {out}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    import subprocess

    from ...commands import run_grid
    from ...evaluation import check_levels

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        deltas = [float(v) for v in args.deltas.split(",") if v.strip()]
        if not deltas or any(not d > 0 for d in deltas):
            raise ValueError(f"--deltas must be positive numbers, got {args.deltas!r}")
        if not cmd:
            raise ValueError("give the training command after --, e.g. -- python examples/landmark/train.py "
                             "--data DATA --epochs 50 --out {out}")
        if not any("{out}" in w for w in cmd):
            raise ValueError("the training command must contain {out} where the script's output folder goes "
                             "(e.g. --out {out}); each Delta trains into its own folder")
        check_levels(args.levels)
    except ValueError as e:
        return _fail("grid", str(e))
    exe = Path(sys.executable).with_name("amat")
    amat = [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]

    def train(delta: float, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        flags = ["--adv", "amat", "--adv-step", f"{delta:g}", "--heatmap-loss", args.heatmap_loss]
        flags += ["--adv-xi", args.adv_xi] if args.adv_xi else ["--adv-xi-rule", args.adv_xi_rule]
        if args.adv_steps:
            flags += ["--adv-steps", str(args.adv_steps)]
        run_dir = folder / "run"
        full = amat + ["run", *flags, "--", *[w.replace("{out}", str(run_dir)) for w in cmd]]
        log = folder / "train.log"
        with open(log, "w", encoding="utf-8") as f:
            f.write(" ".join(full) + "\n")
            f.flush()
            p = subprocess.run(full, stdout=f, stderr=subprocess.STDOUT)
        state = run_dir / "amat_state.json"
        ckpt = None
        if state.is_file():
            from ...io import read_json

            ckpt = read_json(state).get("checkpoint")
        if p.returncode != 0 or not ckpt or not Path(ckpt).is_file():
            tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
            raise RuntimeError(f"training for Delta={delta:g} failed or saved no checkpoint (exit "
                               f"{p.returncode}); log {log}:\n{tail}")
        return Path(ckpt)

    def task_for(checkpoint: Path) -> LandmarkEvalTask:
        model = load_model(checkpoint)
        return LandmarkEvalTask(model, _dataset(args, model.num_landmarks), args.batch_size, args.heatmap_loss)

    try:
        run_grid(deltas, train, task_for, args)
    except RuntimeError as e:
        return _fail("grid", str(e))
    return 0
