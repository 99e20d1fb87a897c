"""The classic YOLOv5 task: ``amat calibrate|eval|grid yolov5`` for ``train.py`` checkpoints.

The checkout (``--yolov5 DIR``, default ``$AMAT_YOLOV5_DIR``) is put on ``sys.path`` for the
command: its checkpoints pickle whole ``models.yolo.DetectionModel`` objects, and the data,
NMS, matching and AP are its own (``create_dataloader``, ``non_max_suppression``,
``scale_boxes``, ``process_batch``, ``ap_per_class``: what ``val.py`` runs). A sample is one
image letterboxed as ``val.py`` does (``rect=True``, ``pad=0.5``); the noise lives on the
``[0, 1]`` image; the attack objective is the sum of the per-image box / obj / cls terms of
the adapter, and ``suppress`` / ``displace`` aim at the detections mAP scores (in ``worst``).
Metrics: mAP50-95 (paper Table 7), mAP50 and the paper's average IoU of all detected objects
(Table 12: best confident same-class box per ground truth, 0 if missed).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from amat_hooks.evaluation import EvalBatch, EvalTask
from amat_hooks.evaluation.metrics import decode_tp, encode_tp, object_ious
from amat_hooks.evaluation.objectives import DETECTION_TERMS, DetectionObjectives
from amat_hooks.integrations.yolov5.adapter import YoloV5Adapter
from amat_hooks.tasks import CalibrationSet, Task, TaskError, TrainRun, amat_executable

METRICS = ("mAP50-95", "mAP50", "IoU")


@contextlib.contextmanager
def checkout_on_path(folder: str | os.PathLike) -> Iterator[None]:
    """The checkout's top-level ``models`` / ``utils`` / ``val`` importable while the block runs."""
    folder = str(Path(folder).resolve())
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def find_checkout(given: str | None) -> Path:
    path = given or os.environ.get("AMAT_YOLOV5_DIR")
    if not path or not (Path(path) / "train.py").is_file() or not (Path(path) / "utils" / "loss.py").is_file():
        raise TaskError("no classic YOLOv5 checkout: pass --yolov5 DIR or set AMAT_YOLOV5_DIR (git clone "
                        "https://github.com/ultralytics/yolov5 && git -C yolov5 checkout 5081342f0)")
    return Path(path).resolve()


class YoloV5EvalTask(DetectionObjectives, EvalTask):
    """One ``train.py`` checkpoint on one split of a data YAML (see the module docstring). The
    attacks aimed at mAP (``suppress``, ``displace``, in ``worst``) read the Detect head's raw
    objectness and class logits and its decoded boxes; the masking check's floor is no detection."""

    higher_is_better = True
    bounds = (0.0, 1.0)

    def __init__(self, checkout: Path, weights: str | Path, data: str, imgsz: int = 640, batch: int = 16,
                 split: str = "val", metric: str = "mAP50-95", det_conf: float = 0.25, augment: bool = False,
                 workers: int = 0) -> None:
        if metric not in METRICS:
            raise TaskError(f"unknown --metric {metric!r}; choose one of {', '.join(METRICS)}")
        with checkout_on_path(checkout):
            import val  # noqa: F401 - the checkout's val.py: process_batch, the NMS settings it uses
            from utils.dataloaders import create_dataloader
            from utils.general import check_dataset
            from utils.loss import ComputeLoss
            from utils.metrics import ap_per_class, process_batch
            from utils.general import non_max_suppression, scale_boxes, xywh2xyxy

            ckpt = torch.load(weights, map_location="cpu", weights_only=False)  # pickled models, as the checkout loads them
            model = (ckpt.get("ema") or ckpt["model"]).float()
            data_dict = check_dataset(data, autodownload=False)
            if not data_dict.get(split):
                raise TaskError(f"split {split} is not in {data}; it has {[k for k in ('train', 'val', 'test') if data_dict.get(k)]}")
            stride = max(int(model.stride.max()), 32)
            self.loader = create_dataloader(data_dict[split], imgsz, batch, stride, pad=0.0 if augment else 0.5,
                                            rect=not augment, augment=augment, hyp=model.hyp, workers=workers,
                                            prefix=f"{split}: ")[0]
            self.adapter = YoloV5Adapter(ComputeLoss(model), sys.modules["utils.loss"])
        self.model = model.train(augment).requires_grad_(False)
        self._nms, self._scale, self._xyxy = non_max_suppression, scale_boxes, xywh2xyxy
        self._match, self._ap = process_batch, ap_per_class
        self.metric, self.det_conf, self.split, self.images = metric, float(det_conf), split, len(self.loader.dataset)
        self.iouv = torch.linspace(0.5, 0.95, 10)
        self.name = f"yolov5:{split}:imgsz={imgsz}:det_conf={self.det_conf:g}"

    def size(self) -> int:
        return len(self.loader)

    def describe_scored(self, samples: int) -> str:
        return f"{samples} {self.split} images"

    def batches(self) -> Iterable[EvalBatch]:
        for i, batch in enumerate(self.loader):
            yield EvalBatch(key=f"{i}:{Path(batch[2][0]).name}", x=self.adapter.inputs(batch), target=batch)

    def measure(self, x: Tensor, target: Any) -> list[dict[str, Any]]:
        """Per image, exactly what val.py collects (NMS at conf 0.001, IoU 0.6, matches at IoU
        0.5:0.95 in native space) plus the per-object IoU of the best confident detection."""
        _, targets, paths, shapes = target
        preds = self._nms(self.model.eval()(x)[0], 0.001, 0.6, multi_label=True, max_det=300)
        h, w = x.shape[2:]
        targets = targets.clone()
        targets[:, 2:] *= torch.tensor((w, h, w, h))
        out = []
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            predn = pred.clone()
            self._scale(x[si].shape[1:], predn[:, :4], shapes[si][0], shapes[si][1])
            tbox = self._xyxy(labels[:, 1:5])
            self._scale(x[si].shape[1:], tbox, shapes[si][0], shapes[si][1])
            correct = (self._match(predn, torch.cat((labels[:, :1], tbox), 1), self.iouv) if len(labels) and len(pred)
                       else torch.zeros(len(pred), 10, dtype=torch.bool))
            out.append({"im": Path(paths[si]).name, "tp": encode_tp(correct.cpu().numpy()),
                        "conf": pred[:, 4].tolist(), "pred_cls": pred[:, 5].tolist(), "target_cls": labels[:, 0].tolist(),
                        "iou": object_ious(tbox, labels[:, 0], predn[:, :4], predn[:, 5], pred[:, 4], self.det_conf)})
        return out

    def trivial_stats(self, target: Any) -> dict[str, Any]:
        """No detection on any image, recorded as :meth:`measure` records a prediction-free image."""
        _, targets, paths, _ = target
        out = []
        for si in range(len(paths)):
            labels = targets[targets[:, 0] == si, 1:]
            out.append({"im": Path(paths[si]).name, "tp": encode_tp(np.zeros((0, 10), dtype=bool)), "conf": [],
                        "pred_cls": [], "target_cls": labels[:, 0].tolist(), "iou": [0.0] * len(labels)})
        return {"no detection": out}

    def detection_predictions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes ``[N, A, 4]`` (xyxy, input pixels) and log(objectness x class) ``[N, A, C]``
        before NMS (what val.py's NMS thresholds), from the Detect head's eval output."""
        import torch.nn.functional as F

        out = self.model.eval()(x)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list)):
            raise TaskError("the attacks aimed at mAP need the Detect head's (decoded, raw) eval output")
        decoded, raw = out
        raw = torch.cat([r.reshape(r.shape[0], -1, r.shape[-1]) for r in raw], 1).float()
        xywh = decoded[..., :4].float()
        boxes = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
        return boxes, F.logsigmoid(raw[..., 4:5]) + F.logsigmoid(raw[..., 5:])

    def detection_truth(self, target: Any, repeats: int) -> list[tuple[Tensor, Tensor]]:
        imgs, targets = target[0], target[1]
        h, w = imgs.shape[2:]
        t = targets.float()
        xywh = t[:, 2:6] * torch.tensor([w, h, w, h], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        per = [(xyxy[t[:, 0] == i], t[t[:, 0] == i, 1].long()) for i in range(imgs.shape[0])]
        return per * repeats

    def reduce(self, stats: list[list[dict[str, Any]]]) -> dict[str, float]:
        images = [im for batch in stats for im in batch]
        ious = [u for im in images for u in im["iou"]]
        if not ious:
            raise TaskError(f"the {self.split} split has no labelled object: mAP and IoU are undefined")
        tp = np.concatenate([decode_tp(im["tp"], 10) for im in images]) if images else np.zeros((0, 10), bool)
        conf, pcls, tcls = (np.asarray([v for im in images for v in im[k]], dtype=np.float64)
                            for k in ("conf", "pred_cls", "target_cls"))
        map50 = map5095 = 0.0
        if tp.any():
            ap = self._ap(tp, conf, pcls, tcls, names={})[5]  # its default names=() is not a dict
            map50, map5095 = float(ap[:, 0].mean()), float(ap.mean(1).mean())
        return {"mAP50-95": map5095, "mAP50": map50, "IoU": float(np.mean(ious))}


class YoloV5Task(Task):
    """Classic YOLOv5 checkpoints (``weights/last.pt`` / ``best.pt`` that ``train.py`` wrote)."""

    name = "yolov5"
    help = "classic YOLOv5 train.py models (box/obj/cls, the paper's detector): mAP50-95 / IoU under L2 PGD, IFGSM"
    default_levels = "bccd"
    xi_rule = "mean+2std"  # paper section 3.7
    model_spec_help = "WEIGHTS.pt"
    report_metrics = ("mAP50-95", "IoU")
    aimed_attacks = tuple(DETECTION_TERMS)
    accepts_extra = True  # the grid's training command after --

    def add_arguments(self, p: argparse.ArgumentParser, command: str) -> None:
        g = p.add_argument_group("classic YOLOv5")
        g.add_argument("--yolov5", default=None, metavar="DIR", help="the checkout (default $AMAT_YOLOV5_DIR)")
        g.add_argument("--data", required=True, help="data YAML, as for train.py --data")
        g.add_argument("--img", type=int, default=320, help="image size (default 320, the paper's BCCD size)")
        g.add_argument("--batch", type=int, default=16)
        g.add_argument("--workers", type=int, default=0)
        if command == "calibrate":
            g.add_argument("--weights", required=True, help="the clean (STD) model's last.pt / best.pt")
            g.add_argument("--split", default="train")
            g.add_argument("--augment", action="store_true",
                           help="score the images as training batches see them (mosaic, HSV, flips; model in train "
                                "mode) instead of letterboxed in eval mode")
            return
        g.add_argument("--split", default="val" if command == "grid" else "test")
        g.add_argument("--metric", default="IoU" if command == "grid" else "mAP50-95", choices=METRICS)
        g.add_argument("--det-conf", type=float, default=0.25, help="confidence of a detection for the avg IoU")
        if command == "grid":
            g.add_argument("--adv-xi-file", default=None, help="xi file from amat calibrate yolov5")
            g.add_argument("script_command", nargs=argparse.REMAINDER, metavar="command",
                           help="-- python train.py ... --project {out} (each Delta trains into its own folder)")

    def check(self, args: argparse.Namespace, command: str) -> None:
        args.checkout = find_checkout(args.yolov5)
        if not Path(args.data).is_file():
            raise TaskError(f"--data {args.data} is not a local file; amat-hooks never downloads datasets")
        if command == "calibrate" and not Path(args.weights).is_file():
            raise TaskError(f"--weights {args.weights} not found; give the clean model's weights/last.pt")
        if command == "grid":
            cmd = self._script(args)
            if not any("{out}" in w for w in cmd):
                raise TaskError("give the training command after --, with {out} where its --project goes: -- python "
                                "train.py --data D --cfg yolov5s.yaml --weights '' --epochs 50 --project {out}")
        levels = getattr(args, "levels", None)
        if levels == [5.0, 10.0, 15.0] and args.img != 320:
            print(f"note: the paper's levels 5,10,15 are for 320x320 images; at --img {args.img} the same noise per "
                  f"pixel is --levels {','.join(f'{v * args.img / 320:g}' for v in levels)}", file=sys.stderr)

    def default_model_name(self, spec: str) -> str:
        p = Path(spec)
        return p.parent.parent.name if p.parent.name == "weights" else p.stem

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        if not Path(spec).is_file():
            raise TaskError(f"model {name}: weights {spec} not found (give the .pt train.py wrote)")

    def eval_task(self, name: str, spec: str, args: argparse.Namespace) -> YoloV5EvalTask:
        return YoloV5EvalTask(args.checkout, spec, args.data, args.img, args.batch, args.split, args.metric,
                              args.det_conf, workers=args.workers)

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        side = Path(spec + ".amat.json")
        return side if side.is_file() else None

    def title(self, args: argparse.Namespace) -> str:
        return f"classic YOLOv5 on {Path(args.data).name}, {args.split} split ({args.metric})"

    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        task = YoloV5EvalTask(args.checkout, args.weights, args.data, args.img, args.batch, args.split,
                              augment=args.augment, workers=args.workers)
        log(f"calibrating xi on {task.images} {args.split} images "
            + ("as training batches see them (train mode)" if args.augment else "(letterboxed, eval mode)"))
        return CalibrationSet(task=task, identity={"data": str(Path(args.data).resolve())},
                              source={"weights": str(args.weights), "split": args.split, "images": task.images,
                                      "img": args.img, "augment": bool(args.augment)},
                              default_path=Path(args.weights).parent / "amat_xi_yolov5.json")

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        return (f"train with: amat run --adv amat --adv-step D --adv-xi-file {path} -- python train.py ...   "
                f"(or --adv-xi {','.join(f'{v:.6g}' for v in xi)})")

    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        flags = ["--adv", "amat", "--adv-step", f"{delta:g}"]
        if args.adv_xi_file:
            flags += ["--adv-xi-file", args.adv_xi_file]
        cmd = [*amat_executable(), "run", *flags, "--",
               *[w.replace("{out}", str(folder / "run")) for w in self._script(args)]]
        script = next((w for w in cmd if w.endswith("train.py")), None)
        if script is not None and not Path(script).is_absolute():
            cmd[cmd.index(script)] = str(args.checkout / "train.py")

        def last() -> Path | None:
            found = sorted((folder / "run").glob("*/weights/last.pt"))
            return found[-1] if found else None

        return TrainRun(cmd=cmd, artefact=last)

    @staticmethod
    def _script(args: argparse.Namespace) -> list[str]:
        cmd = list(getattr(args, "script_command", None) or []) + list(getattr(args, "extra", None) or [])
        return cmd[1:] if cmd and cmd[0] == "--" else cmd
