"""Segmentation attack objectives for the core attack loop (L2, 2D and 3D).

An objective turns logits ``[N, C, *S]`` and an integer label map ``[N, *S]`` (plus an
optional valid-pixel mask) into one loss term per sample: a per-pixel cross-entropy
weighted per pixel and averaged over the sample's valid pixels. The weights are not
differentiated (they only choose where the attack pushes):

* ``segpgd`` (Gu et al., ECCV 2022): correctly classified pixels weigh ``1 - lambda``,
  wrongly classified ones ``lambda``, with ``lambda = t / (2 T)`` at iteration ``t`` of
  ``T`` (0-based; the paper's ``(t - 1) / (2T)`` with 1-based t). Early iterations flip
  correct pixels, later ones also keep the flipped pixels wrong.
* ``cospgd`` (Agnihotri et al., ICML 2024): each pixel's CE is weighted by the cosine
  similarity between its softmax output and its one-hot target, ``p_y / ||p||_2`` (the
  authors' code: one-hot via ``permute(0, 3, 1, 2)``, 2D only; here any number of
  spatial dims).
* ``mce`` (masked CE, the SEA ensemble of Croce et al., ECCV 2024): CE on the pixels that
  are still correctly classified, 0 on the others.

Pixels whose label is outside ``[0, C)`` (an ignore label) or whose mask is False do not
count. The literature's versions are Linf; here the same objectives drive the core L2
attack (:func:`amat_hooks.attacks.pgd`, per-sample eps, projection, batched levels).

A task opts in by implementing :class:`SegmentationObjectives` (``segmentation_logits``,
``segmentation_labels``, optionally ``segmentation_valid``).

Aimed at a detector's metric (mAP), for any task that implements :class:`DetectionObjectives`
(boxes and log class confidences before NMS, and the true boxes): ``suppress`` (the class
confidence of the predictions matching each true box pushed down) and ``displace`` (the IoU of
the confident predictions overlapping it pushed down). A task hands them to the core through
:meth:`EvalTask.objectives <amat_hooks.evaluation.task.EvalTask.objectives>`; they join ``worst``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from amat_hooks.attacks import IterationLoss

SEGMENTATION_OBJECTIVES = ("segpgd", "cospgd", "mce")


# -- per-pixel weights ------------------------------------------------------------------------------
def _safe_labels(logits: Tensor, labels: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Labels clamped into [0, C) and the mask of pixels that count."""
    if logits.dim() < 3:
        raise ValueError(f"segmentation logits must be [N, C, *S] with at least one spatial dim, "
                         f"got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)} "
                         f"(need [N, *S] for [N, C, *S])")
    labels = labels.long()
    c = logits.shape[1]
    ok = (labels >= 0) & (labels < c)
    if valid is not None:
        if valid.shape != labels.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} does not match labels {tuple(labels.shape)}")
        ok = ok & valid.bool()
    return labels.clamp(0, c - 1), ok


def segpgd_lambda(iteration: int | None, steps: int | None) -> float:
    """SegPGD's weight of the wrongly classified pixels at 0-based ``iteration`` of ``steps``;
    ``None`` (the point an attack returns) is the limit 1/2."""
    if iteration is None or steps is None:
        return 0.5
    return min(float(iteration), float(steps)) / (2.0 * steps)


def segpgd_weights(logits: Tensor, labels: Tensor, iteration: int | None = None,
                   steps: int | None = None) -> Tensor:
    """``1 - lambda`` on correctly classified pixels, ``lambda`` on the others ``[N, *S]``."""
    lam = segpgd_lambda(iteration, steps)
    correct = logits.detach().argmax(1) == labels
    return torch.where(correct, torch.full_like(labels, 1.0 - lam, dtype=logits.dtype),
                       torch.full_like(labels, lam, dtype=logits.dtype))


def cospgd_weights(logits: Tensor, labels: Tensor, iteration: int | None = None,
                   steps: int | None = None) -> Tensor:
    """Cosine similarity of softmax(logits) and one-hot(labels) along the class dim: ``p_y / ||p||``."""
    p = logits.detach().float().softmax(1)
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    return F.cosine_similarity(p, onehot, dim=1).to(logits.dtype)


def mce_weights(logits: Tensor, labels: Tensor, iteration: int | None = None,
                steps: int | None = None) -> Tensor:
    """1 on the pixels still classified correctly, 0 on the others."""
    return (logits.detach().argmax(1) == labels).to(logits.dtype)


WEIGHTS: dict[str, Callable[..., Tensor]] = {"segpgd": segpgd_weights, "cospgd": cospgd_weights,
                                             "mce": mce_weights}


def objective_terms(name: str, logits: Tensor, labels: Tensor, valid: Tensor | None = None,
                    iteration: int | None = None, steps: int | None = None) -> Tensor:
    """Per-sample loss ``[N]``: ``sum(w * CE * valid) / max(#valid, 1)`` over the spatial dims."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown segmentation objective {name!r}; choose from {SEGMENTATION_OBJECTIVES}")
    labels, ok = _safe_labels(logits, labels, valid)
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    w = WEIGHTS[name](logits, labels, iteration, steps).float() * ok.float()
    n = ok.flatten(1).sum(1).clamp_min(1).float()
    return (w * ce).flatten(1).sum(1) / n


# -- the task interface -----------------------------------------------------------------------------
class SegmentationObjectives:
    """What an :class:`~amat_hooks.evaluation.EvalTask` implements to be attacked with
    ``segpgd``, ``cospgd`` and ``mce`` (and to get a radius from one forward per step).

    ``target`` and ``repeats`` are what :meth:`EvalTask.loss_terms` receives: the batch's
    own target, and how often the batch is repeated (level-major) in ``x``.
    """

    def segmentation_logits(self, x: Tensor) -> Tensor:
        """Logits ``[N, C, *S]`` of the full-resolution output (deep supervision: the first)."""
        raise NotImplementedError

    def segmentation_labels(self, target: Any, repeats: int) -> Tensor:
        """Integer label map ``[repeats*B, *S]`` (level-major, like ``loss_terms``)."""
        raise NotImplementedError

    def segmentation_valid(self, target: Any, repeats: int) -> Tensor | None:
        """Bool mask ``[repeats*B, *S]`` of the pixels that count (padding excluded), or None."""
        return None

    def segmentation_foreground(self) -> Sequence[int] | None:
        """Foreground labels of the per-sample Dice (None: every label > 0 present)."""
        return getattr(self, "labels", None)


def supports_segmentation(task: Any) -> bool:
    """Whether ``task`` implements ``segmentation_logits`` and ``segmentation_labels``."""
    for name in ("segmentation_logits", "segmentation_labels"):
        fn = getattr(task, name, None)
        if fn is None or getattr(fn, "__func__", None) is getattr(SegmentationObjectives, name):
            return False
    return True


def _valid(task: Any, target: Any, repeats: int) -> Tensor | None:
    fn = getattr(task, "segmentation_valid", None)
    return fn(target, repeats) if fn is not None else None


def _foreground(task: Any) -> Sequence[int] | None:
    fn = getattr(task, "segmentation_foreground", None)
    return fn() if fn is not None else getattr(task, "labels", None)


class ObjectiveLoss(IterationLoss):
    """``task``'s logits under objective ``name``, as a loss for :func:`~amat_hooks.attacks.pgd`."""

    def __init__(self, task: Any, name: str, target: Any, repeats: int) -> None:
        if name not in WEIGHTS:
            raise ValueError(f"unknown segmentation objective {name!r}; choose from {SEGMENTATION_OBJECTIVES}")
        self.task, self.name = task, name
        self.labels = task.segmentation_labels(target, repeats)
        self.valid = _valid(task, target, repeats)

    def terms_at(self, x: Tensor, iteration: int | None, steps: int | None) -> Tensor:
        return objective_terms(self.name, self.task.segmentation_logits(x), self.labels, self.valid,
                               iteration, steps)


def dice_scores(logits: Tensor, labels: Tensor, valid: Tensor | None,
                foreground: Sequence[int] | None) -> Tensor:
    """Per-sample Dice ``[N]`` (float64, on the logits' device: no host sync inside an attack
    loop) of ``argmax(logits)``: :func:`amat_hooks.evaluation.metrics.dice_counts` +
    :func:`~amat_hooks.evaluation.metrics.dice_from_counts` computed in place (pixels outside
    ``valid`` count as background; no foreground anywhere scores 1)."""
    pred = logits.detach().argmax(1)
    lab = labels.long()
    if valid is not None:
        pred, lab = pred * valid, lab * valid
    n = pred.shape[0]
    p, t = pred.reshape(n, -1), lab.reshape(n, -1)
    if foreground is None:
        foreground = [int(v) for v in torch.unique(torch.cat([p.flatten(), t.flatten()])) if v > 0]
    tp = torch.zeros(n, dtype=torch.float64, device=p.device)
    fp, fn = tp.clone(), tp.clone()
    for c in foreground:
        pc, tc = p == c, t == c
        tp += (pc & tc).sum(1).double()
        fp += (pc & ~tc).sum(1).double()
        fn += (~pc & tc).sum(1).double()
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1e-12), torch.ones_like(den))


def segmentation_step_fn(task: Any, objective: str, target: Any, repeats: int,
                         broken: Callable[[Tensor], Tensor]) -> Callable[[Tensor, int, int], tuple[Tensor, Tensor]]:
    """``step_fn`` for :func:`~amat_hooks.attacks.min_norm`: objective terms and
    ``broken(per-sample Dice)`` from one forward pass."""
    loss = ObjectiveLoss(task, objective, target, repeats)
    fg = _foreground(task)

    def step(z: Tensor, iteration: int, steps: int) -> tuple[Tensor, Tensor]:
        logits = task.segmentation_logits(z)
        terms = objective_terms(objective, logits, loss.labels, loss.valid, iteration, steps)
        scores = dice_scores(logits, loss.labels, loss.valid, fg)
        return terms, broken(scores)

    return step


# -- aimed at the metric: detection ------------------------------------------------------------------
#: a prediction whose IoU with a true box reaches this matches it (the metric's loosest threshold)
DETECTION_MATCH_IOU = 0.5
#: log-confidence below which a prediction leaves the validators' NMS output (conf 0.001)
DETECTION_DROP_LOG_CONF = math.log(1e-3)


def box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[A, G]`` of boxes ``a`` ``[A, 4]`` and ``b`` ``[G, 4]`` (x1, y1, x2, y2), differentiable in both."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda z: (z[:, 2] - z[:, 0]).clamp_min(0) * (z[:, 3] - z[:, 1]).clamp_min(0)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp_min(1e-9)


def _logit_of_log(log_conf: Tensor) -> Tensor:
    """logit(p) from log(p), stable where p is near 0 or 1."""
    lc = log_conf.clamp(max=-1e-7)
    return lc - torch.log(-torch.expm1(lc))


def suppress_terms(boxes: Tensor, log_conf: Tensor, truth: Sequence[tuple[Tensor, Tensor]],
                   match_iou: float = DETECTION_MATCH_IOU, drop: float = DETECTION_DROP_LOG_CONF) -> Tensor:
    """Per image ``[N]``: minus the mean over its true boxes of the soft maximum (log-sum-exp)
    of the class logit of the predictions that match the box (IoU >= ``match_iou``, chosen
    without gradient), each box's value floored where its confidence leaves the NMS output.
    Ascending it lowers the confidence of exactly the predictions that are true positives.
    ``boxes`` ``[N, A, 4]`` xyxy, ``log_conf`` ``[N, A, C]`` (log of the class confidence: for
    YOLOv5 objectness x class), ``truth[n]`` = (boxes ``[G, 4]`` xyxy in the same space, classes ``[G]``)."""
    floor = float(_logit_of_log(torch.tensor(drop)))
    out = []
    for n, (tb, tc) in enumerate(truth):
        if tb.shape[0] == 0:
            out.append(log_conf[n].sum() * 0.0)
            continue
        iou = box_iou_pairs(boxes[n].detach(), tb.to(boxes.dtype))               # [A, G]
        logit = _logit_of_log(log_conf[n][:, tc.long()])                         # [A, G]
        # a finite stand-in for -inf: an unmatched box floors with a zero (not NaN) gradient
        score = torch.where(iou >= match_iou, logit, torch.full_like(logit, -1e4)).logsumexp(0)
        out.append(-score.clamp_min(floor).mean() + log_conf[n].sum() * 0.0)
    return torch.stack(out)


def displace_terms(boxes: Tensor, log_conf: Tensor, truth: Sequence[tuple[Tensor, Tensor]],
                   sharpness: float = 10.0, drop: float = DETECTION_DROP_LOG_CONF) -> Tensor:
    """Per image ``[N]``: minus the mean over its true boxes of the IoU of the predictions of
    that class that the metric would match first, i.e. weighted (without gradient) by
    ``softmax(log conf + sharpness * IoU)`` over the predictions still in the NMS output that
    overlap it. Ascending it moves the confident, overlapping boxes off their objects."""
    out = []
    for n, (tb, tc) in enumerate(truth):
        if tb.shape[0] == 0:
            out.append(boxes[n].sum() * 0.0)
            continue
        iou = box_iou_pairs(boxes[n], tb.to(boxes.dtype))                        # [A, G]
        lc = log_conf[n][:, tc.long()].detach()
        keep = (iou.detach() > 0) & (lc >= drop)
        w = torch.where(keep, lc + sharpness * iou.detach(), torch.full_like(lc, -math.inf))
        has = keep.any(0)
        w = torch.where(has[None, :], w, torch.zeros_like(w)).softmax(0) * has[None, :]
        out.append(-(w * iou).sum(0).mean() + boxes[n].sum() * 0.0)
    return torch.stack(out)


DETECTION_TERMS: dict[str, Callable[..., Tensor]] = {"suppress": suppress_terms, "displace": displace_terms}
_DETECTION_ABOUT = {
    "suppress": "the class confidence of the predictions matching each true box (IoU >= 0.5) pushed down",
    "displace": "the confident predictions overlapping each true box moved off it (their IoU pushed down)",
}


class DetectionObjectives:
    """What a detection :class:`~amat_hooks.evaluation.EvalTask` implements to be attacked with
    ``suppress`` and ``displace`` (objectives aimed at the detections mAP scores; part of
    ``worst``): raw predictions with gradient, and the true boxes in the same pixel space."""

    def detection_predictions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(boxes [N, A, 4] x1y1x2y2 in input pixels, log class confidence [N, A, C])`` before NMS."""
        raise NotImplementedError

    def detection_truth(self, target: Any, repeats: int) -> list[tuple[Tensor, Tensor]]:
        """Per row of ``repeats*B`` (level-major): (true boxes ``[G, 4]`` xyxy in input pixels, classes ``[G]``)."""
        raise NotImplementedError

    def objectives(self) -> dict[str, Any]:
        from amat_hooks.evaluation.task import Objective

        def make(name: str):
            def terms(x: Tensor, target: Any, repeats: int) -> Tensor:
                boxes, log_conf = self.detection_predictions(x)
                return DETECTION_TERMS[name](boxes, log_conf, self.detection_truth(target, repeats))
            return terms

        return {name: Objective(make(name), _DETECTION_ABOUT[name], short=name[:3].upper())
                for name in DETECTION_TERMS}
