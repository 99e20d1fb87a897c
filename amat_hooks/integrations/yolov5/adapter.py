"""The classic YOLOv5 adapter: ``(imgs, targets, paths, shapes)`` batches of ``train.py`` and
per-image box / obj / cls terms from the script's OWN ``utils.loss.ComputeLoss``.

Batch anatomy (``utils/dataloaders.py`` of the checkout): ``imgs`` uint8 ``[B, 3, H, W]``,
``targets`` ``[N, 6] = (image index, class, x, y, w, h)``, ``paths`` one file per image (under
mosaic the primary image, ``im_files[indices[index]]``, also with ``--image-weights``: the
sample id), ``shapes``. The attack space is ``imgs.float() / 255`` clamped to ``[0, 1]``; the
script receives float images at its own 0..255 scale (never re-quantised to uint8, which
would erase noise of about one grey level per pixel), so its ``.float() / 255`` gives back
exactly the attacked rows. Targets are repeated for the noisy rows with the image index
shifted by B.

Loss terms: the script's ``ComputeLoss.__call__`` is called as the script calls it while its
reductions are observed (``build_targets``' image index per match, ``bbox_iou``, the BCE of
objectness and classes), so anchors, matching, balance and hyp gains are the script's. Term
``k`` of image ``j`` is its share of the batch loss scaled by the batch size: the terms sum
to the script's loss (``(lbox + lobj + lcls) * bs``) and average to its loss items.
That loss is a SUM over the batch, so the 2B rows the runner hands the script would double
the step; the adapter says so (:attr:`YoloV5Adapter.sums_over_batch`) and the runner halves
the gradient of the model's outputs: the step is Algorithm 1's ``(L0 + L1) / 2``.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amat_hooks.adapter import AdapterError, BatchAdapter, BoundLoss, stretch

TERM_NAMES = ("box", "obj", "cls")


def is_yolov5_batch(batch: Any) -> bool:
    """``(imgs [B, 3, H, W], targets [N, 6], paths (B str), shapes (B))`` as ``train.py`` iterates them."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 4):
        return False
    imgs, targets, paths, shapes = batch
    return (isinstance(imgs, Tensor) and imgs.dim() == 4 and isinstance(targets, Tensor) and targets.dim() == 2
            and targets.shape[1] == 6 and isinstance(paths, (tuple, list)) and len(paths) == imgs.shape[0]
            and all(isinstance(p, str) for p in paths) and isinstance(shapes, (tuple, list)))


def script_loss_module() -> Any:
    """The checkout's ``utils.loss`` module the running ``train.py`` imported (None if not loaded)."""
    mod = sys.modules.get("utils.loss")
    return mod if mod is not None and hasattr(mod, "ComputeLoss") and hasattr(mod, "bbox_iou") else None


def bare(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel (attack forwards must not arm DDP)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def raw_predictions(output: Any) -> list:
    """The Detect layer's per-level outputs: the output itself in train mode, its second part
    ``(inference, raw)`` in eval mode (as val.py passes ``train_out`` to the loss)."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], (list, tuple)):
        return list(output[1])
    return output


@dataclass
class _Seen:
    indices: list = field(default_factory=list)
    iou: list = field(default_factory=list)
    obj: list = field(default_factory=list)
    cls: list = field(default_factory=list)


@contextlib.contextmanager
def _observed(loss: Any, module: Any, seen: _Seen) -> Iterator[None]:
    """Record what ``loss.__call__`` reduces: match indices, per-match IoU, element-wise BCE."""
    real_targets, real_iou, real_obj, real_cls = loss.build_targets, module.bbox_iou, loss.BCEobj, loss.BCEcls

    def build_targets(p, targets):
        out = real_targets(p, targets)
        seen.indices = out[2]
        return out

    def bbox_iou(*args, **kwargs):
        v = real_iou(*args, **kwargs)
        seen.iou.append(v.reshape(-1))
        return v

    def observe(real: nn.BCEWithLogitsLoss, store: list):
        def call(pred: Tensor, target: Tensor) -> Tensor:
            store.append(F.binary_cross_entropy_with_logits(pred, target, pos_weight=real.pos_weight, reduction="none"))
            return real(pred, target)
        return call

    loss.build_targets, module.bbox_iou = build_targets, bbox_iou
    loss.BCEobj, loss.BCEcls = observe(real_obj, seen.obj), observe(real_cls, seen.cls)
    try:
        yield
    finally:
        del loss.build_targets  # the instance attribute: the class method shows through again
        module.bbox_iou, loss.BCEobj, loss.BCEcls = real_iou, real_obj, real_cls


def loss_with_terms(loss: Any, module: Any, preds: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, items [3], terms [B, 3])``: the script's ComputeLoss on ``preds`` and its per-image terms."""
    if not (isinstance(loss.BCEobj, nn.BCEWithLogitsLoss) and isinstance(loss.BCEcls, nn.BCEWithLogitsLoss)):
        raise AdapterError("hyp fl_gamma > 0 (focal loss): the per-image terms support the plain BCE of the default "
                           "hyps only; train with fl_gamma: 0.0")
    balance = list(loss.balance)  # autobalance changes it inside the call, after using it
    seen = _Seen()
    with _observed(loss, module, seen):
        total, items = loss(preds, targets)
    b = preds[0].shape[0]
    dev = preds[0].device
    box, obj, cls = (torch.zeros(b, device=dev) for _ in range(3))
    matched = [i for i, ind in enumerate(seen.indices) if ind[0].shape[0]]
    for i, iou in zip(matched, seen.iou):
        img = seen.indices[i][0]
        box.index_add_(0, img, (1.0 - iou.float()) / img.shape[0])
    if loss.nc > 1:
        for i, bce in zip(matched, seen.cls):
            img = seen.indices[i][0]
            cls.index_add_(0, img, bce.float().sum(1) / bce.numel())
    for i, bce in enumerate(seen.obj):
        obj += bce.float().flatten(1).sum(1) / bce.numel() * balance[i]
    h = loss.hyp
    terms = torch.stack([box * h["box"], obj * h["obj"], cls * h["cls"]], 1) * b
    return total, items, terms


class YoloV5Adapter(BatchAdapter):
    """Classic YOLOv5 ``train.py`` batches scored by a ``ComputeLoss`` of the script's own class
    (built from the script's model, as ``train.py`` builds its own)."""

    name = "classic YOLOv5 (imgs, targets, paths, shapes), the script's ComputeLoss per image"
    term_names = TERM_NAMES
    term_floors = (0.0, 0.0, 0.0)
    calibrate_hint = "amat calibrate yolov5 --weights CLEAN.pt --data DATA.yaml"
    #: the attack space: imgs / 255
    input_bounds = (0.0, 1.0)
    #: the script's loss is (lbox + lobj + lcls) * batch size: a sum over the rows it is given
    sums_over_batch = True
    protocol_kind = "yolov5"

    def __init__(self, loss: Any, module: Any) -> None:
        self.loss, self.module = loss, module

    @classmethod
    def for_model(cls, model: nn.Module) -> "YoloV5Adapter":
        module = script_loss_module()
        if module is None:
            raise AdapterError("the classic YOLOv5 batch came from a script that imported no utils.loss.ComputeLoss")
        if not hasattr(bare(model), "hyp"):
            raise AdapterError("the YOLOv5 model has no .hyp yet (train.py sets it before its first batch)")
        return cls(module.ComputeLoss(bare(model)), module)

    def inputs(self, batch: Any) -> Tensor:
        imgs = batch[0]
        return imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs / 255

    def ids(self, batch: Any) -> Sequence[Hashable]:
        return list(batch[2])

    def with_inputs(self, batch: Any, x: Tensor) -> tuple:
        imgs, targets, paths, shapes = batch
        b = imgs.shape[0]
        k = stretch(b, x.shape[0], "YOLOv5 batch")
        copies = [targets]
        for j in range(1, k):
            t = targets.clone()
            t[:, 0] += j * b
            copies.append(t)
        return (x * 255, torch.cat(copies), tuple(paths) * k, tuple(shapes) * k)

    def output_terms(self, batch: Any, output: Any) -> Tensor:
        preds = raw_predictions(output)
        return loss_with_terms(self.loss, self.module, preds, batch[1].to(preds[0].device))[2]

    def bind_loss(self, batch: Any, model: nn.Module) -> BoundLoss:
        net, targets = bare(model), batch[1]

        def terms(x: Tensor) -> Tensor:
            return loss_with_terms(self.loss, self.module, raw_predictions(net(x)), targets.to(x.device))[2]

        return BoundLoss(terms=terms, term_names=list(TERM_NAMES))
