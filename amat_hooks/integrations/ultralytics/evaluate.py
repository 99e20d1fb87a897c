"""``amat eval yolo`` / ``amat grid yolo``: robustness of Ultralytics detection models.

A sample is one image of the data YAML's split, loaded by Ultralytics' own dataset and
dataloader in val mode (no augmentation) and letterboxed to ``imgsz x imgsz`` (``rect=False``,
as the paper resizes BCCD to 320x320 and as training sees it), then scaled to ``[0, 1]``
by Ultralytics' validator. The L2 noise lives on that ``[0, 1]`` image (clamped to it).
The attack objective is the sum of the per-image terms of Ultralytics' own detection
criterion with the ground-truth boxes (:mod:`.adapter`), white box; ``suppress`` and
``displace`` aim at the detections mAP scores instead (part of ``worst``).

Metrics (computed by Ultralytics' own code, never re-implemented here):

- ``mAP50-95`` (primary, paper Table 7) and ``mAP50``, ``precision``, ``recall``: each image
  goes through Ultralytics' ``DetectionValidator`` (NMS, ``match_predictions``,
  ``update_metrics``); :meth:`YoloEvalTask.reduce` feeds the stored per-image stats to
  Ultralytics' ``DetMetrics`` (``ap_per_class``).
- ``IoU``, the paper's tuning metric "average IoU of all detected objects" (section 3.8,
  Table 12): for every ground-truth object, the IoU (Ultralytics' ``box_iou``) of the best
  prediction of its class with confidence >= ``det_conf`` (0.25, Ultralytics' predict
  default), 0 when there is none (a missed object), averaged over all objects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from amat_hooks.evaluation import EvalBatch, EvalTask
from amat_hooks.evaluation.metrics import decode_tp, encode_tp, object_ious
from amat_hooks.evaluation.objectives import DetectionObjectives
from amat_hooks.integrations.ultralytics.adapter import TARGET_KEYS, YoloAdapter
from amat_hooks.integrations.ultralytics.offline import prepare_offline

#: Ultralytics arguments ``amat eval yolo`` passes to the validator config, and defaults.
EVAL_DEFAULTS = {"split": "val", "batch": 16, "workers": 0, "device": "cpu", "rect": False, "plots": False,
                 "save_json": False, "save_txt": False, "verbose": False}
METRICS = ("mAP50-95", "mAP50", "IoU", "precision", "recall")


class YoloEvalError(ValueError):
    """A model file, data YAML or split needed for evaluation is missing or unusable."""


class YoloEvalTask(DetectionObjectives, EvalTask):
    """One Ultralytics detection model on one split of a data YAML; see the module docstring.

    Attacks aimed at mAP (``suppress``, ``displace``; part of ``worst``) read the head's raw
    class logits and decoded boxes before NMS (:meth:`detection_predictions`); the masking
    check's floor is an empty prediction (:meth:`trivial_stats`)."""

    name = "yolo"
    higher_is_better = True
    bounds = (0.0, 1.0)

    def __init__(self, weights: str | Path, data: str | Path, *, metric: str = "mAP50-95", det_conf: float = 0.25,
                 workdir: str | Path | None = None, **overrides: Any) -> None:
        prepare_offline()
        from ultralytics.cfg import get_cfg
        from ultralytics.data.utils import check_det_dataset
        from ultralytics.models.yolo.detect import DetectionValidator
        from ultralytics.nn.tasks import load_checkpoint
        from ultralytics.utils import DEFAULT_CFG_KEYS
        from ultralytics.utils.torch_utils import select_device

        from amat_hooks.integrations.ultralytics.validator import build_criterion

        if metric not in METRICS:
            raise YoloEvalError(f"unknown metric {metric!r}; choose one of {METRICS}")
        weights = Path(weights)
        if not weights.is_file():
            raise YoloEvalError(f"model weights {weights} not found; give the .pt an Ultralytics training "
                                f"wrote (e.g. runs/detect/train/weights/best.pt); amat-hooks never downloads")
        if not Path(data).is_file():
            raise YoloEvalError(f"data={data} is not a local file; give the path of a data YAML "
                                f"(e.g. from `amat bccd`); amat-hooks never downloads datasets")
        self.metric = metric
        self.det_conf = float(det_conf)
        net, ckpt = load_checkpoint(weights)
        train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k in DEFAULT_CFG_KEYS}
        args = {**EVAL_DEFAULTS, "imgsz": train_args.get("imgsz", 640), **overrides,
                "mode": "val", "data": str(data), "model": str(weights)}
        try:
            cfg = get_cfg(overrides=args)
        except SyntaxError as e:  # Ultralytics' message for unknown keys
            raise YoloEvalError(f"bad Ultralytics argument: {e}") from None
        try:
            data_dict = check_det_dataset(str(data), autodownload=False)
        except Exception as e:  # noqa: BLE001 - Ultralytics raises several types for a bad YAML
            raise YoloEvalError(f"cannot read data={data}: {e}") from None
        split = cfg.split
        if not data_dict.get(split):
            have = [k for k in ("train", "val", "test") if data_dict.get(k)]
            raise YoloEvalError(f"split={split} is not in {data} (it has {have}); use split=val or split=test")
        self.device = select_device(cfg.device, verbose=False)
        self.model = net.to(self.device).eval()
        self.names = dict(net.names)
        save_dir = Path(workdir) if workdir is not None else Path(weights).parent
        validator = DetectionValidator(args=cfg, save_dir=save_dir)
        validator.device, validator.data, validator.training = self.device, data_dict, False
        validator.stride = max(int(net.stride.max()), 32)
        validator.names = self.names
        self.loader = validator.get_dataloader(data_dict[split], cfg.batch)
        validator.dataloader = self.loader
        validator.init_metrics(net)  # Ultralytics' own setup (max_det from the data, nc, end2end)
        self.validator = validator
        self.adapter = YoloAdapter(build_criterion(net))
        self.split = split
        self.weights = weights
        # part of the resume fingerprint: a partial state of another split/size/threshold is refused
        self.name = f"yolo:{split}:imgsz={cfg.imgsz}:det_conf={self.det_conf:g}"

    # -- data ---------------------------------------------------------------------------------
    def size(self) -> int:
        return len(self.loader)

    def describe_scored(self, samples: int) -> str:
        return f"{samples} {self.split} images"

    def batches(self) -> Iterable[EvalBatch]:
        for i, raw in enumerate(self.loader):
            batch = self.validator.preprocess(raw)  # Ultralytics': to device, float, / 255
            key = f"{i}:{Path(batch['im_file'][0]).name}"
            target = {k: batch[k] for k in (*TARGET_KEYS, "img", "im_file", "ori_shape", "ratio_pad")}
            yield EvalBatch(key=key, x=batch["img"], target=target)

    # -- metrics ---------------------------------------------------------------------------------
    def measure(self, x: Tensor, target: dict[str, Any]) -> list[dict[str, Any]]:
        """Per-image stats exactly as Ultralytics' validator records them (``tp`` bit-packed)
        plus the per-object IoU of the best confident same-class detection."""
        v = self.validator
        batch = {**target, "img": x}
        preds = v.postprocess(self.model(x))
        metrics = v.metrics
        metrics.clear_stats()
        v.update_metrics(preds, batch)  # Ultralytics: _prepare_batch, _process_batch (matcher), update_stats
        stats = {k: list(vals) for k, vals in metrics.stats.items()}
        metrics.clear_stats()
        metrics.clear_image_metrics()
        out = []
        for si, pred in enumerate(preds):
            pb = v._prepare_batch(si, batch)
            ious = object_ious(pb["bboxes"], pb["cls"], pred["bboxes"], pred["cls"], pred["conf"], self.det_conf)
            out.append({"im": Path(pb["im_file"]).name, "tp": encode_tp(stats["tp"][si]),
                        "conf": [float(c) for c in stats["conf"][si]],
                        "pred_cls": [int(c) for c in stats["pred_cls"][si]],
                        "target_cls": [int(c) for c in stats["target_cls"][si]],
                        "iou": ious})
        return out

    def trivial_stats(self, target: dict[str, Any]) -> dict[str, Any]:
        """No detection on any image, recorded as :meth:`measure` records a prediction-free image."""
        v = self.validator
        out = []
        for si in range(len(target["im_file"])):
            pb = v._prepare_batch(si, target)
            out.append({"im": Path(pb["im_file"]).name, "tp": encode_tp(np.zeros((0, int(v.niou)), dtype=bool)),
                        "conf": [], "pred_cls": [], "target_cls": [int(c) for c in pb["cls"].tolist()],
                        "iou": [0.0] * len(pb["cls"])})
        return {"no detection": out}

    # -- attacks aimed at mAP (amat_hooks.evaluation.objectives.DetectionObjectives) ---------------------
    def detection_predictions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes ``[N, A, 4]`` (xyxy, input pixels) and log class confidences ``[N, A, C]`` of the
        head the metric scores (one-to-one for end-to-end models), before NMS, with gradient."""
        import torch.nn.functional as F

        out = self.model(x)
        preds = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        if not isinstance(preds, dict):
            raise YoloEvalError("the attacks aimed at mAP need the detection head's raw predictions (Ultralytics' "
                                "Detect head returning (y, preds) in eval mode); this model does not give them")
        head = self.model.model[-1]
        if "one2one" in preds:
            preds = preds["one2one" if head.end2end else "one2many"]
        boxes = head._get_decode_boxes(preds).transpose(1, 2)          # Ultralytics' own decoding
        if not head.end2end and not getattr(head, "xyxy", False):     # xywh -> xyxy
            boxes = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)
        return boxes, F.logsigmoid(preds["scores"].float()).transpose(1, 2)

    def detection_truth(self, target: dict[str, Any], repeats: int) -> list[tuple[Tensor, Tensor]]:
        h, w = target["img"].shape[2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=target["bboxes"].device)
        idx, cls, xywh = target["batch_idx"].view(-1), target["cls"].view(-1), target["bboxes"].float() * scale
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        b = target["img"].shape[0]
        per = [(xyxy[idx == i], cls[idx == i].long()) for i in range(b)]
        return per * repeats

    def reduce(self, stats: list[list[dict[str, Any]]]) -> dict[str, float]:
        try:
            return detection_metrics([im for batch_stats in stats for im in batch_stats], self.names,
                                     niou=int(self.validator.niou))
        except ValueError as e:
            raise YoloEvalError(f"the {self.split} split: {e}") from None


def detection_metrics(images: list[dict[str, Any]], names: dict[int, str], niou: int = 10) -> dict[str, float]:
    """mAP etc. by Ultralytics' ``DetMetrics``/``ap_per_class`` over per-image stats (as
    :meth:`YoloEvalTask.measure` writes them); ``IoU`` averaged over all ground-truth objects."""
    from ultralytics.utils.metrics import DetMetrics

    dm = DetMetrics(names=names)
    ious: list[float] = []
    for im in images:
        target_cls = np.asarray(im["target_cls"], dtype=np.float64)
        dm.update_stats({"tp": decode_tp(im["tp"], niou), "conf": np.asarray(im["conf"], dtype=np.float64),
                         "pred_cls": np.asarray(im["pred_cls"], dtype=np.float64),
                         "target_cls": target_cls, "target_img": np.unique(target_cls), "im_name": im["im"]})
        ious.extend(im["iou"])
    if not ious:
        raise ValueError("no labelled object: mAP and the average IoU are undefined")
    dm.process(plot=False)
    r = dm.results_dict
    out = {"mAP50-95": r["metrics/mAP50-95(B)"], "mAP50": r["metrics/mAP50(B)"], "IoU": float(np.mean(ious)),
           "precision": r["metrics/precision(B)"], "recall": r["metrics/recall(B)"]}
    return {k: float(v) for k, v in out.items()}
