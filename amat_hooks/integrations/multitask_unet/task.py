"""The landmark task: ``amat calibrate|eval|grid landmark`` for Multi-Task U-Nets.

Checkpoints load as scripts save them (:func:`load_model`: nested state dicts,
DataParallel's ``module.``, unused keys such as torchvision's ``vgg.classifier.*`` named and
ignored); the input size and heatmap term come from the checkpoint's ``amat run`` sidecar
where the flags do not give them. Data: either layout of :mod:`.data`. Evaluation: MRE (mm, original resolution) and SDR
under L2 PGD / IFGSM on the three loss terms (paper Table 6) and under the attacks aimed at the
voted location (``heatmap``, ``vote``: :mod:`.objectives`, part of ``worst``). The grid trains the
user's script once per Delta through ``amat run``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.evaluation import EvalBatch, EvalTask
from amat_hooks.integrations.multitask_unet.objectives import ABOUT
from amat_hooks.tasks import CalibrationSet, Task, TaskError, TrainRun, amat_executable


#: Buffers a checkpoint may lack without harm (BatchNorm's counter, absent before torch 0.4.1).
_OPTIONAL_KEYS = ("num_batches_tracked",)


def load_model(checkpoint: str | Path, in_channels: int | None = None, log=None) -> nn.Module:
    """A :class:`MultiTaskUNet` from a checkpoint as training scripts save it.

    Accepts a ``state_dict`` or a dict holding one (``state_dict``/``model``/``net`` ...),
    with or without DataParallel's ``module.`` prefixes. The landmark count comes from the
    head, the input channels from the first convolution. Keys the model does not use (the
    public code keeps torchvision's unused ``vgg.classifier.*``) are ignored and named
    through ``log``; a key the model needs that is missing or has another shape is a
    :class:`TaskError` naming it.
    """
    from amat_hooks.run.checkpoints import CheckpointError, read_state_dict
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = read_state_dict(path)
    except CheckpointError as e:
        raise TaskError(str(e)) from None
    head = state.get("final.weight")
    if head is None or head.dim() != 4 or head.shape[0] % 3:
        raise TaskError(f"{path} is not a Multi-Task U-Net checkpoint: no head 'final.weight' of shape "
                        f"[3 * landmarks, 64, 1, 1] (keys start {', '.join(list(state)[:3])}); save net.state_dict() "
                        f"of a Multi-Task U-Net (MultiTaskUNet; python -m amat_hooks.examples.landmark_train "
                        f"saves them)")
    first = state.get("vgg.features.0.weight")
    channels = in_channels or (int(first.shape[1]) if first is not None and first.dim() == 4 else 3)
    model = MultiTaskUNet(num_landmarks=head.shape[0] // 3, in_channels=channels)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEYS)]
    wrong = [f"{k} {list(state[k].shape)} (model: {list(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} needed key(s) missing ({_names(missing)})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})")
        raise TaskError(f"{path} cannot be loaded as a Multi-Task U-Net with {head.shape[0] // 3} landmarks: "
                        f"{'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    unused = [k for k in state if k not in expected]
    if unused:
        (log or _stderr)(f"{path.name}: ignored {len(unused)} key(s) the model does not use: {_names(unused)}")
    return model.eval()


def _names(keys: Sequence[str], show: int = 4) -> str:
    """Keys, grouped by their first two components where many share them."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(".".join(k.split(".")[:2]), []).append(k)
    parts = [g[0] if len(g) == 1 else f"{prefix}.* ({len(g)} keys)" for prefix, g in groups.items()]
    return ", ".join(parts[:show]) + (f", ... ({len(parts) - show} more groups)" if len(parts) > show else "")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def checkpoint_sidecar(checkpoint: str | Path) -> dict[str, Any]:
    """The state ``amat run`` wrote next to a checkpoint (``CKPT.amat.json``; ``{}`` if none)."""
    from amat_hooks.run import SIDECAR_SUFFIX
    from amat_hooks.state import StateError, read_state

    try:
        return read_state(Path(str(checkpoint) + SIDECAR_SUFFIX))
    except StateError:
        return {}


def training_setup(checkpoint: str | Path, args: argparse.Namespace) -> tuple[tuple[int, int], str, str]:
    """``((H, W), heatmap loss, where they came from)`` for a checkpoint: the flags where
    given, else what its sidecar recorded (the run's input size and heatmap term), else
    the paper's 200x160 and Dice."""
    from amat_hooks.zoo.isbi import PAPER_SIZE

    side = checkpoint_sidecar(checkpoint)
    shape = (side.get("host_state") or {}).get("input_shape")
    recorded = (side.get("adapter") or {}).get("heatmap_loss")
    notes = []
    if args.size:
        size, notes = (int(args.size[0]), int(args.size[1])), notes + ["--size"]
    elif isinstance(shape, list) and len(shape) >= 2:
        size = (int(shape[-2]), int(shape[-1]))
        notes.append(f"input size from {Path(str(checkpoint)).name}.amat.json")
    else:
        size = PAPER_SIZE
        notes.append("input size: the paper's (no --size, no sidecar)")
    if args.heatmap_loss:
        kind = args.heatmap_loss
    elif recorded in ("dice", "bce"):
        kind = recorded
        notes.append("heatmap term from the sidecar")
    else:
        kind = "dice"
    return size, kind, "; ".join(notes)


class LandmarkEvalTask(EvalTask):
    """MRE (mm, original resolution) and SDR of a Multi-Task U-Net on a LandmarkDataset."""

    name = "landmark"
    metric = "MRE"
    higher_is_better = False
    bounds = (-1.0, 1.0)  # images are normalised to [-1, 1]

    def __init__(self, model: nn.Module, dataset: Any, batch_size: int = 4, heatmap_loss: str = "dice") -> None:
        from amat_hooks.integrations.multitask_unet.adapter import LandmarkAdapter

        self.model = model
        self.dataset = dataset
        self.batch_size = batch_size
        self.adapter = LandmarkAdapter(heatmap_loss)

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
            # the dataset index: what `amat run` keys a margin by (the training DataLoader's index)
            yield EvalBatch(key=key, x=cols[0], target=tuple(cols), ids=list(idx))

    def objectives(self) -> dict[str, Any]:
        """``heatmap`` and ``vote``: attacks aimed at the voted location (:mod:`.objectives`), in ``worst``."""
        from amat_hooks.adapter import repeat_rows
        from amat_hooks.evaluation.task import Objective
        from amat_hooks.integrations.multitask_unet.objectives import ABOUT, heatmap_terms, vote_terms

        radius = float(self.dataset.radius)

        def aimed(fn):
            def terms(x: Tensor, target: Any, repeats: int) -> Tensor:
                lm = target[5]
                return fn(self.model(x), repeat_rows(lm, lm.shape[0], repeats), radius)
            return terms

        return {"heatmap": Objective(aimed(heatmap_terms), ABOUT["heatmap"], short="HM"),
                "vote": Objective(aimed(vote_terms), ABOUT["vote"], short="VOTE")}

    def measure(self, x: Tensor, target: Any) -> list[list[float]]:
        from amat_hooks.evaluation.metrics import radial_errors_mm
        from amat_hooks.zoo.landmark_maps import voting

        heat, oy, ox = self.model(x)
        pred = voting(heat, oy, ox, self.dataset.radius)
        return radial_errors_mm(pred, target[5], **self.dataset.to_original_mm()).tolist()

    def reduce(self, stats: list[Any]) -> dict[str, float]:
        from amat_hooks.evaluation.metrics import mre, sdr

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
    aimed_attacks = tuple(ABOUT)
    accepts_extra = True   # the grid's training command after --

    _SPLIT = {"calibrate": "train", "eval": "test", "grid": "val"}

    def add_arguments(self, p: argparse.ArgumentParser, command: str) -> None:
        g = p.add_argument_group("landmark data")
        if command == "calibrate":
            g.add_argument("--checkpoint", required=True,
                           help="state_dict of a clean Multi-Task U-Net (e.g. model_epoch_499.pth)")
        g.add_argument("--data", required=True,
                       help="ISBI 2015 data: this repo's CSV layout (../shared/data/isbi2015_ceph, amat "
                            "landmark-data) or the challenge's (RawImage/, AnnotationsByMD/400_junior, 400_senior)")
        split = self._SPLIT[command]
        g.add_argument("--split", default=split, help=f"train, val, test or all (default {split}; paper split)")
        g.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="network input size (default: the size the checkpoint was trained at, from its "
                            "amat run sidecar CKPT.amat.json; else 200 160, the paper's)")
        g.add_argument("--annotation", default="mean", choices=["mean", "points", "junior", "senior"],
                       help="mean of both doctors (default, the paper's ground truth), points/junior (points.csv "
                            "or 400_junior), senior")
        g.add_argument("--heatmap-loss", default=None, choices=["dice", "bce"],
                       help="heatmap term of the loss the attack and xi use (default: the one the checkpoint "
                            "was trained with, from its sidecar; else dice)")
        g.add_argument("--batch-size", type=int, default=4)
        g.add_argument("--max-images", type=int, default=None)
        if command == "grid":
            t = p.add_argument_group("training per Delta (passed to amat run)")
            t.add_argument("--adv-xi-rule", default="mean+2std", choices=["mean", "mean+2std"])
            t.add_argument("--adv-xi", default=None, help="fixed xi a,b,c (from amat calibrate landmark)")
            t.add_argument("--adv-xi-file", default=None, help="xi file from amat calibrate landmark")
            t.add_argument("--adv-steps", type=int, default=None, help="PGD iterations for training noise")
            t.add_argument("script_command", nargs=argparse.REMAINDER, metavar="command",
                           help="-- python SCRIPT.py ... --out {out}")

    def check(self, args: argparse.Namespace, command: str) -> None:
        if command == "grid":
            cmd = self._script(args)
            if not cmd:
                raise TaskError("give the training command after --, e.g. -- python -m "
                                "amat_hooks.examples.landmark_train --data DATA --epochs 50 --out {out}")
            if not any("{out}" in w for w in cmd):
                raise TaskError("the training command must contain {out} where the script's output folder "
                                "goes (e.g. --out {out}); each Delta trains into its own folder")
        if command == "calibrate" and not Path(args.checkpoint).is_file():
            raise TaskError(f"checkpoint not found: {args.checkpoint}")
        from amat_hooks.zoo.isbi import LandmarkDataError, detect_layout

        try:
            detect_layout(args.data)
        except LandmarkDataError as e:
            raise TaskError(str(e)) from None

    # -- eval ---------------------------------------------------------------------------------
    def default_model_name(self, spec: str) -> str:
        return Path(spec).parent.name or Path(spec).stem

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        if not Path(spec).is_file():
            raise TaskError(f"checkpoint not found: {spec} (model {name})")

    def eval_task(self, name: str, spec: str, args: argparse.Namespace) -> LandmarkEvalTask:
        model = load_model(spec)
        size, kind, notes = training_setup(spec, args)
        print(f"{name}: input {size[0]}x{size[1]}, heatmap term {kind}" + (f" ({notes})" if notes else ""),
              file=sys.stderr)
        batch = args.batch_size
        if getattr(args, "protocol", "paper") == "authors" and batch != 1:
            print(f"note: --protocol authors evaluates landmarks in train mode with batch 1 (not --batch-size {batch}), "
                  f"as the authors' scripts do", flush=True)
            batch = 1
        return LandmarkEvalTask(model, self._dataset(args, model, size), batch, kind)

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        from amat_hooks.run import SIDECAR_SUFFIX

        side = Path(spec + SIDECAR_SUFFIX)
        return side if side.is_file() else None

    def title(self, args: argparse.Namespace) -> str:
        return f"Multi-Task U-Net, {args.split} split (MRE, mm; lower is better)"

    # -- calibrate ----------------------------------------------------------------------------
    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        model = load_model(args.checkpoint)
        size, kind, notes = training_setup(args.checkpoint, args)
        log(f"input {size[0]}x{size[1]}, heatmap term {kind}" + (f" ({notes})" if notes else ""))
        args.heatmap_loss = kind  # for xi_usage
        ds = self._dataset(args, model, size)
        return CalibrationSet(task=LandmarkEvalTask(model, ds, args.batch_size, kind), identity={"heatmap_loss": kind},
                              source={"checkpoint": str(args.checkpoint), "data": str(args.data), "layout": ds.layout,
                                      "split": args.split, "size": list(size), "annotation": ds.annotation_used},
                              default_path=Path(args.checkpoint).with_name("amat_xi_landmark.json"))

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        return (f"use: amat run --adv amat --adv-step 1 --adv-xi-file {path} --heatmap-loss {args.heatmap_loss} "
                f"-- python ...   (or --adv-xi {','.join(f'{v:.6g}' for v in xi)})")

    # -- grid ---------------------------------------------------------------------------------
    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        flags = ["--adv", "amat", "--adv-step", f"{delta:g}"]
        if args.heatmap_loss:  # else amat run infers it from the script
            flags += ["--heatmap-loss", args.heatmap_loss]
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
            from amat_hooks.atomic_files import read_json

            state = run_dir / "amat_state.json"
            ckpt = read_json(state).get("checkpoint") if state.is_file() else None
            return Path(ckpt) if ckpt and Path(ckpt).is_file() else None

        return TrainRun(cmd=cmd, artefact=checkpoint)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _script(args: argparse.Namespace) -> list[str]:
        cmd = list(getattr(args, "script_command", None) or []) + [w for w in getattr(args, "extra", []) or []]
        return cmd[1:] if cmd and cmd[0] == "--" else cmd

    def _dataset(self, args: argparse.Namespace, model: nn.Module, size: tuple[int, int]):
        from amat_hooks.zoo.isbi import LandmarkDataError
        from amat_hooks.zoo.isbi_dataset import LandmarkDataset

        channels = int(model.vgg.features[0].in_channels)
        key = (args.data, args.split, tuple(size), args.annotation, model.num_landmarks, channels, args.max_images)
        cache = getattr(self, "_datasets", {})
        if key not in cache:
            try:
                ds = LandmarkDataset(args.data, args.split, size=size, annotation=args.annotation,
                                     num_landmarks=model.num_landmarks, channels=channels,
                                     max_images=args.max_images)
            except LandmarkDataError as e:
                raise TaskError(str(e)) from None
            print(f"{args.split}: {len(ds)} images at {size[0]}x{size[1]}, {ds.layout_used}, annotation: "
                  f"{ds.annotation_used}", file=sys.stderr)
            cache[key] = ds
            self._datasets = cache
        return cache[key]
