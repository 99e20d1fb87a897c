"""Task metrics of the paper: ADI / TVDI (segmentation), AUC_robust (eq. 4)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def dice_counts(pred: Tensor, target: Tensor, labels: Sequence[int] | None = None) -> Tensor:
    """Per-sample (TP, FP, FN) summed over foreground ``labels`` -> ``[B, 3]``.

    ``pred``/``target`` are integer label maps ``[B, ...]`` on any device (the counts come
    back on the CPU). Default labels: every value > 0
    present in either map (the foreground, as one class per label, counts added).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} shapes differ")
    target = target.to(pred.device)
    if labels is None:
        labels = [int(v) for v in torch.unique(torch.cat([pred.flatten(), target.flatten()])) if v > 0]
    b = pred.shape[0]
    p, t = pred.reshape(b, -1), target.reshape(b, -1)
    out = torch.zeros(b, 3, dtype=torch.float64, device=pred.device)
    for c in labels:
        pc, tc = p == c, t == c
        out[:, 0] += (pc & tc).sum(1).double()
        out[:, 1] += (pc & ~tc).sum(1).double()
        out[:, 2] += (~pc & tc).sum(1).double()
    return out.cpu()  # counted where the maps are (a GPU), returned on the CPU as before


def dice_from_counts(counts: Tensor, empty: float = 1.0) -> Tensor:
    """2TP / (2TP + FP + FN) per row; a sample with no foreground in prediction and label
    scores ``empty`` (1.0: nothing to find, nothing found), never NaN."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1e-12), torch.full_like(den, empty))


def adi(counts: Tensor) -> float:
    """Average Dice Index (eq. 3): the mean of per-sample Dice."""
    return float(dice_from_counts(counts).mean())


def tvdi(counts: Tensor) -> float:
    """Total voxel Dice Index (eq. 5): Dice of the summed counts."""
    tp, fp, fn = counts.sum(0).tolist()
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2 * tp / den


def auc_robust(clean: float, noisy: Sequence[float], levels: Sequence[float] | None = None) -> float:
    """AUC_robust = sqrt(clean x AUC) (paper eq. 4).

    With ``levels``, AUC is the paper's "normalised area under the curve of accuracy vs.
    noise level": the trapezoid area from level 0 (the clean score) to the largest level,
    divided by that level. This reproduces the paper's Tables 8-10 (e.g. Heart, Delta=5:
    0.9101 / 0.8673, 0.8205, 0.7681 at 5, 10, 15 -> 0.8755). Without ``levels`` AUC is the
    plain mean of the noisy scores. For lower-is-better metrics (MRE) the same formula
    is applied to the metric itself and read as lower-is-better (Table 11 equals it up to
    a constant factor of 0.258).
    """
    if not noisy:
        raise ValueError("auc_robust needs at least one noise level")
    if clean < 0 or min(noisy) < 0:
        raise ValueError("auc_robust needs non-negative scores")
    if levels is None:
        area = sum(noisy) / len(noisy)
    else:
        if len(levels) != len(noisy):
            raise ValueError(f"{len(levels)} levels but {len(noisy)} noisy scores")
        xs = [0.0] + [float(v) for v in levels]
        ys = [clean] + list(noisy)
        area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(levels))) / xs[-1]
    return math.sqrt(clean * area)


# -- landmark detection (Multi-Task U-Net, paper section 3.6) -------------------------------------
SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)


def radial_errors_mm(pred: Tensor, target: Tensor, scale_x: float = 1.0, scale_y: float = 1.0,
                     pixel_mm: float = 0.1) -> Tensor:
    """Radial error in mm per landmark ``[N, L]`` from (x, y) pixel coordinates ``[N, L, 2]``.

    ``scale_x``/``scale_y`` map the network's pixels back to the original image (e.g.
    1935/160 and 2400/200 for ISBI at 200x160): errors are measured at the original
    resolution, ``pixel_mm`` per original pixel (0.1 mm for ISBI 2015), as in Yao et al.
    """
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    if pred.shape != target.shape or pred.dim() < 2 or pred.shape[-1] != 2:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(target.shape)} landmarks must both "
                         f"be [..., L, 2] (x, y)")
    dx = (pred[..., 0] - target[..., 0]) * scale_x
    dy = (pred[..., 1] - target[..., 1]) * scale_y
    return torch.sqrt(dx ** 2 + dy ** 2) * pixel_mm


def mre(errors_mm: Tensor) -> float:
    """Mean Radial Error (mm) over all images and landmarks; lower is better."""
    e = torch.as_tensor(errors_mm, dtype=torch.float64)
    if e.numel() == 0:
        raise ValueError("mre needs at least one radial error")
    return float(e.mean())


def sdr(errors_mm: Tensor, radii_mm: Sequence[float] = SDR_RADII_MM) -> dict[float, float]:
    """Successful Detection Rate (%) per radius: share of landmarks with error < radius mm."""
    e = torch.as_tensor(errors_mm, dtype=torch.float64).reshape(-1)
    if e.numel() == 0:
        raise ValueError("sdr needs at least one radial error")
    return {float(r): float((e < r).double().mean() * 100) for r in radii_mm}


# -- detection (YOLO, paper section 3.7, Table 12) ---------------------------------------------------
def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]``."""
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-12)


def object_ious(target_boxes: Tensor, target_cls: Tensor, pred_boxes: Tensor, pred_cls: Tensor, conf: Tensor,
                det_conf: float) -> list[float]:
    """The paper's "average IoU of all detected objects", per ground-truth object: the IoU (xyxy)
    of the best prediction of its class with ``conf >= det_conf``; 0 for an object nothing detects."""
    keep = conf >= det_conf
    if not len(target_cls) or not bool(keep.any()):
        return [0.0] * len(target_cls)
    iou = box_iou(target_boxes.float(), pred_boxes[keep].float()) * (target_cls[:, None] == pred_cls[keep][None])
    return [float(u) for u in iou.max(1).values.cpu()]


def encode_tp(tp) -> list[int]:
    """``[N, T]`` bool (correct at each IoU threshold) -> one int per prediction (bit j = threshold j)."""
    import numpy as np

    tp = np.asarray(tp)
    weights = 1 << np.arange(tp.shape[1], dtype=np.int64)
    return (tp.astype(np.int64) * weights).sum(1).tolist()


def decode_tp(codes: list[int], niou: int):
    """:func:`encode_tp` undone: ``[N, niou]`` bool (numpy)."""
    import numpy as np

    arr = np.asarray(codes, dtype=np.int64).reshape(-1, 1)
    return ((arr >> np.arange(niou, dtype=np.int64)) & 1).astype(bool)
