"""What ``amat calibrate yolo`` scores: the clean model on the training split.

By default the clean model runs in eval mode on the training split WITHOUT augmentation
(letterbox only: :class:`~.evaluate.YoloEvalTask` on that split) and its own criterion gives
each image's terms through the adapter; the shared command computes ``xi = mean`` or
``mean + 2 std`` per term (paper section 2.2; 3.7: mean+2std on BCCD).

Why ``augmented_passes``: AMAT compares xi with the terms of TRAINING batches, which
Ultralytics augments (mosaic, HSV, flips, scale/translate) and scores in train mode (batch
statistics in BatchNorm). Un-augmented eval-mode terms are lower, so xi from them fails
many clean training images (BCCD round 2: margins stayed at Delta). With N > 0 the images
are scored N times as a training epoch sees them (:class:`AugmentedTrainingImages`): the
checkpoint's training hyperparameters (overridable with key=value, e.g. ``mosaic=0`` when
the AMAT run is within close_mosaic), seeded, model in train mode on a throw-away copy.
"""
from __future__ import annotations

import random
from typing import Any, Iterable

import numpy as np
import torch

from amat_hooks.evaluation import EvalBatch, EvalTask
from amat_hooks.integrations.ultralytics.adapter import TARGET_KEYS, YoloAdapter
from amat_hooks.integrations.ultralytics.offline import prepare_offline


class AugmentedTrainingImages(EvalTask):
    """The training split as a training epoch sees it, ``passes`` times (calibration only)."""

    name = "yolo-train-augmented"

    def __init__(self, model: str, data: str, split: str = "train", imgsz: int | None = None, batch: int = 16,
                 device: str | None = None, workers: int = 0, passes: int = 1, seed: int = 0, log=print,
                 **overrides: Any) -> None:
        prepare_offline()
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_dataloader, build_yolo_dataset
        from ultralytics.data.utils import check_det_dataset
        from ultralytics.nn.tasks import load_checkpoint
        from ultralytics.utils import DEFAULT_CFG_KEYS
        from ultralytics.utils.torch_utils import select_device

        from amat_hooks.integrations.ultralytics.validator import build_criterion

        data_dict = check_det_dataset(data)
        net, ckpt = load_checkpoint(model)
        train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k in DEFAULT_CFG_KEYS}
        hyp = {k: v for k, v in overrides.items() if k in DEFAULT_CFG_KEYS}
        cfg = get_cfg(overrides={**train_args, **hyp, "imgsz": imgsz or train_args.get("imgsz", 640), "batch": batch,
                                 "rect": False, "mode": "train", "data": data, "model": str(model), "cache": False,
                                 "fraction": 1.0})
        self.device = select_device(device if device is not None else "cpu", verbose=False)
        self.model = net.to(self.device).train()  # a loaded copy: BatchNorm running statistics may change
        dataset = build_yolo_dataset(cfg, data_dict[split], batch, data_dict, mode="train", rect=False,
                                     stride=max(int(net.stride.max()), 32))
        self.loader = build_dataloader(dataset, batch, workers, shuffle=False, rank=-1)
        self.adapter = YoloAdapter(build_criterion(net))
        self.passes, self.seed, self.images = passes, seed, len(dataset)
        log(f"scoring {passes} augmented pass(es) in train mode: mosaic={cfg.mosaic} scale={cfg.scale} "
            f"translate={cfg.translate} fliplr={cfg.fliplr} flipud={cfg.flipud} "
            f"hsv=({cfg.hsv_h},{cfg.hsv_s},{cfg.hsv_v}) (seed {seed})")

    def size(self) -> int:
        return len(self.loader) * self.passes

    def batches(self) -> Iterable[EvalBatch]:
        random.seed(self.seed), np.random.seed(self.seed), torch.manual_seed(self.seed)
        for p in range(self.passes):
            for i, b in enumerate(self.loader):
                img = b["img"].to(self.device).float() / 255
                batch = {**{k: b[k].to(self.device) for k in TARGET_KEYS}, "img": img, "im_file": b["im_file"]}
                yield EvalBatch(key=f"{p}:{i}", x=img, target=batch)

    def measure(self, x, target):  # pragma: no cover - calibration only
        raise NotImplementedError("AugmentedTrainingImages scores loss terms for calibration only")

    def reduce(self, stats):  # pragma: no cover - calibration only
        raise NotImplementedError("AugmentedTrainingImages scores loss terms for calibration only")
