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


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _dataset_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--checkpoint", required=True, help="state_dict of a Multi-Task U-Net (e.g. model_epoch_499.pth)")
    p.add_argument("--data", required=True, help="ISBI 2015 folder (../shared/data/isbi2015_ceph) or a generated one")
    p.add_argument("--split", default=split, help=f"train, val, test or all (default {split}; paper split)")
    p.add_argument("--size", type=int, nargs=2, default=[200, 160], metavar=("H", "W"))
    p.add_argument("--annotation", default="mean", choices=["mean", "points", "senior"])
    p.add_argument("--heatmap-loss", default="dice", choices=["dice", "bce"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-images", type=int, default=None)


def add_task_commands(command: str, subparsers: argparse._SubParsersAction) -> None:
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
            "landmark", help="MRE/SDR (mm) under 100-step L2 PGD and 10-step IFGSM",
            description="MRE in mm at the original resolution and SDR at 2/2.5/3/4 mm, clean and under "
                        "white-box L2 PGD / IFGSM on the three loss terms (paper Table 6).")
        _dataset_args(p, "test")
        p.add_argument("--levels", type=_float_list, default=[0.5, 1.0, 2.0], help="L2 noise levels (0.5,1,2)")
        p.add_argument("--attacks", default="pgd,ifgsm")
        p.add_argument("--pgd-steps", type=int, default=100)
        p.add_argument("--ifgsm-steps", type=int, default=10)
        p.add_argument("--name", default=None, help="row name in the table (default: checkpoint name)")
        p.add_argument("--out", default=None, help="folder for the report (JSON, Markdown, CSV)")
        p.set_defaults(func=_eval)


def _load(args: argparse.Namespace):
    from .data import LandmarkDataset

    model = load_model(args.checkpoint)
    ds = LandmarkDataset(args.data, args.split, size=tuple(args.size), annotation=args.annotation,
                         num_landmarks=model.num_landmarks, max_images=args.max_images)
    print(f"{args.split}: {len(ds)} images, annotation: {ds.annotation_used}", file=sys.stderr)
    return model, ds


def _calibrate(args: argparse.Namespace) -> int:
    from ...io import atomic_write_json
    from ...thresholds import xi_from_losses
    from .losses import TERM_NAMES

    try:
        model, ds = _load(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"amat calibrate landmark: error: {e}", file=sys.stderr)
        return 2
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


def _eval(args: argparse.Namespace) -> int:
    from ...evaluation import robustness_eval, save_result
    from ...report import to_markdown

    try:
        model, ds = _load(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"amat eval landmark: error: {e}", file=sys.stderr)
        return 2
    task = LandmarkEvalTask(model, ds, args.batch_size, args.heatmap_loss)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    result = robustness_eval(task, args.levels, attacks=attacks, pgd_steps=args.pgd_steps,
                             ifgsm_steps=args.ifgsm_steps, progress=sys.stderr.isatty())
    name = args.name or Path(args.checkpoint).stem
    table = to_markdown({name: result})
    print(table)
    for attack in attacks:
        for lv in result.levels:
            v = result.noisy[attack][lv]
            print(f"{attack}@{lv:g}: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items()))
    print("clean: " + ", ".join(f"{k} {x:.3f}" for k, x in result.clean.items()))
    if args.out:
        out = Path(args.out)
        save_result(result, out / f"{name}.json")
        from ...io import atomic_write_text

        atomic_write_text(out / f"{name}.md", table + "\n")
    return 0
