"""Clean per-image terms of a YOLO model for ``amat calibrate yolo``.

By default the clean model runs in eval mode on the training split WITHOUT augmentation
(letterbox only) and its own criterion gives each image's terms (:mod:`.terms`); the shared
command computes ``xi = mean`` or ``mean + 2 std`` per term (paper section 2.2; 3.7:
mean+2std on BCCD).

Why ``augmented_passes``: AMAT compares xi with the terms of TRAINING batches, which
Ultralytics augments (mosaic, HSV, flips, scale/translate) and scores in train mode (batch
statistics in BatchNorm). Un-augmented eval-mode terms are lower, so xi from them fails
many clean training images (BCCD round 2: margins stayed at Delta). With N > 0 the images
are scored N times as a training epoch sees them: the checkpoint's training hyperparameters
(overridable with key=value, e.g. ``mosaic=0`` when the AMAT run is within close_mosaic),
seeded, model in train mode on a throw-away copy.
"""
from __future__ import annotations

from typing import Any

import random

import numpy as np
import torch

from amat_hooks.integrations.ultralytics.offline import prepare_offline


def per_image_terms(model: str, data: str, split: str = "train", imgsz: int | None = None, batch: int = 16,
                    device: str | None = None, workers: int = 0, augmented_passes: int = 0, seed: int = 0,
                    log=print, **overrides: Any) -> tuple[torch.Tensor, list[str], list[str]]:
    """``[N, K]`` clean terms, the image paths in dataset order, and the term names
    (``N = images x augmented_passes`` when augmented). ``overrides``: Ultralytics
    hyperparameters (key=value words) applied over the checkpoint's training arguments."""
    prepare_offline()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils import DEFAULT_CFG_KEYS
    from ultralytics.utils.torch_utils import select_device

    from amat_hooks.integrations.ultralytics.terms import criterion_with_terms, term_names
    from amat_hooks.integrations.ultralytics.validator import build_criterion

    data_dict = check_det_dataset(data)
    if split not in data_dict or not data_dict[split]:
        raise ValueError(f"split {split!r} not found in {data}; it has: "
                         f"{[k for k in ('train', 'val', 'test') if data_dict.get(k)]}")
    net, ckpt = load_checkpoint(model)
    train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k in DEFAULT_CFG_KEYS}
    size = imgsz or train_args.get("imgsz", 640)
    hyp = {k: v for k, v in overrides.items() if k in DEFAULT_CFG_KEYS}
    augmented = augmented_passes > 0
    mode = "train" if augmented else "val"
    cfg = get_cfg(overrides={**train_args, **hyp, "imgsz": size, "batch": batch, "rect": False, "mode": mode,
                             "data": data, "model": str(model), "cache": False, "fraction": 1.0})
    dev = select_device(device if device is not None else "cpu", verbose=False)
    net = net.to(dev).train(augmented)  # a loaded copy: BatchNorm running statistics may change
    stride = max(int(net.stride.max()), 32)
    dataset = build_yolo_dataset(cfg, data_dict[split], batch, data_dict, mode=mode, rect=False, stride=stride)
    loader = build_dataloader(dataset, batch, workers, shuffle=False, rank=-1)
    crit = build_criterion(net)
    if augmented:
        log(f"scoring {augmented_passes} augmented pass(es) in train mode: mosaic={cfg.mosaic} "
            f"scale={cfg.scale} translate={cfg.translate} fliplr={cfg.fliplr} flipud={cfg.flipud} "
            f"hsv=({cfg.hsv_h},{cfg.hsv_s},{cfg.hsv_v}) (seed {seed})")
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    rows, files = [], []
    with torch.no_grad():
        for _pass in range(max(augmented_passes, 1)):
            for b in loader:
                img = b["img"].to(dev).float() / 255
                targets = {k: b[k].to(dev) for k in ("batch_idx", "cls", "bboxes")}
                rows.append(criterion_with_terms(crit, net(img), targets).terms.cpu())
                files.extend(b["im_file"])
    return torch.cat(rows), files, term_names(crit)
