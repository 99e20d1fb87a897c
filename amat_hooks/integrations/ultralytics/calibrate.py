"""Clean per-image terms of a YOLO model for ``amat calibrate yolo``.

The clean model runs in eval mode on the training split WITHOUT augmentation (letterbox
only) and its own criterion gives each image's terms (:mod:`.terms`); the shared command
computes ``xi = mean`` or ``mean + 2 std`` per term (paper section 2.2; 3.7: mean+2std on BCCD).
"""
from __future__ import annotations

from typing import Any

import torch

from .offline import prepare_offline


def per_image_terms(model: str, data: str, split: str = "train", imgsz: int | None = None, batch: int = 16,
                    device: str | None = None, workers: int = 0,
                    **_: Any) -> tuple[torch.Tensor, list[str], list[str]]:
    """``[N, K]`` clean terms, the image paths in dataset order, and the term names."""
    prepare_offline()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils import DEFAULT_CFG_KEYS
    from ultralytics.utils.torch_utils import select_device

    from .terms import criterion_with_terms, term_names
    from .validator import build_criterion

    data_dict = check_det_dataset(data)
    if split not in data_dict or not data_dict[split]:
        raise ValueError(f"split {split!r} not found in {data}; it has: "
                         f"{[k for k in ('train', 'val', 'test') if data_dict.get(k)]}")
    net, ckpt = load_checkpoint(model)
    train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k in DEFAULT_CFG_KEYS}
    size = imgsz or train_args.get("imgsz", 640)
    cfg = get_cfg(overrides={**train_args, "imgsz": size, "batch": batch, "rect": False, "mode": "val",
                             "data": data, "model": str(model), "cache": False, "fraction": 1.0})
    dev = select_device(device if device is not None else "cpu", verbose=False)
    net = net.to(dev).eval()
    stride = max(int(net.stride.max()), 32)
    dataset = build_yolo_dataset(cfg, data_dict[split], batch, data_dict, mode="val", rect=False, stride=stride)
    loader = build_dataloader(dataset, batch, workers, shuffle=False, rank=-1)
    crit = build_criterion(net)
    rows, files = [], []
    with torch.no_grad():
        for b in loader:
            img = b["img"].to(dev).float() / 255
            targets = {k: b[k].to(dev) for k in ("batch_idx", "cls", "bboxes")}
            rows.append(criterion_with_terms(crit, net(img), targets).terms.cpu())
            files.extend(b["im_file"])
    return torch.cat(rows), files, term_names(crit)
