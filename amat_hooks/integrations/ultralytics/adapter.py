"""The Ultralytics YOLO adapter: a detection batch and per-image (box, cls, dfl) loss terms
from Ultralytics' own detection criterion.

Batch anatomy: a dict with ``img`` (``[B, 3, H, W]``, already ``/255`` after
``preprocess_batch``), ``im_file`` (one path per image: the sample id; under mosaic the first
of the four images) and the targets ``batch_idx`` / ``cls`` / ``bboxes``.

Why not re-implement the YOLO loss: the criterion (task-aligned assignment, CIoU, DFL,
BCE, gains, class weights) changes between Ultralytics releases. Instead the trainer's own
criterion object is called exactly as Ultralytics calls it, while its two reductions are
observed: ``criterion.bce`` (unreduced BCE, ``[B, anchors, nc]``) and
``criterion.bbox_loss`` (Ultralytics' ``BboxLoss`` module, re-called on each image's slice
of the assigned targets). One assignment pass serves the whole batch.

Definition: term ``k`` of image ``i`` is the loss Ultralytics would report for image ``i``
as a batch of one, i.e. ``gain_k * numerator_k(i) / max(sum(target_scores(i)), 1)``.
The batch loss is the same numerators over the batch-wide normaliser, so
``sum_i terms[i, k] * max(tss_i, 1) / max(tss, 1) == loss[k]`` (``DetectionLossWithTerms.weights``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch
from torch import Tensor

from amat_hooks.adapter import AdapterError, BatchAdapter, BoundLoss, stretch
from amat_hooks.config import AdvConfig, AdvConfigError

TARGET_KEYS = ("batch_idx", "cls", "bboxes")
#: The terms of Ultralytics' detection loss (``dfl`` is ``l1`` for reg_max=1 heads) and the
#: least value each can take: CIoU loss, BCE and DFL/L1 are never below 0.
DETECTION_TERMS = ("box", "cls", "dfl")
DETECTION_TERM_FLOORS = (0.0, 0.0, 0.0)
XI_FIX = "amat calibrate yolo model=<STD best.pt> data=<data.yaml>"


class UnsupportedCriterionError(TypeError):
    """The model's criterion is not built from Ultralytics' v8DetectionLoss."""


@dataclass
class _Record:
    bce: list[Tensor] = field(default_factory=list)
    box: list[Tensor] = field(default_factory=list)   # per-image numerators [B]
    dfl: list[Tensor] = field(default_factory=list)
    tss: list[Tensor] = field(default_factory=list)   # per-image sum of target scores [B]
    tss_batch: list[Tensor] = field(default_factory=list)


def detection_parts(criterion: Any) -> list[tuple[Any, str | None]]:
    """The v8DetectionLoss objects inside ``criterion`` and the attribute holding each one's
    weight in the total (``None`` = weight 1). Supports v8DetectionLoss and E2ELoss."""
    from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

    if type(criterion) is v8DetectionLoss:
        return [(criterion, None)]
    if isinstance(criterion, E2ELoss) and type(criterion.one2many) is v8DetectionLoss:
        return [(criterion.one2many, "o2m"), (criterion.one2one, "o2o")]
    raise UnsupportedCriterionError(
        f"per-sample loss terms need Ultralytics' detection criterion (v8DetectionLoss or E2ELoss), "
        f"got {type(criterion).__name__}; adversarial training supports the 'detect' task only "
        f"(segment/pose/obb/classify are not supported yet)")


@contextlib.contextmanager
def _observe(part: Any, rec: _Record) -> Iterator[None]:
    """Temporarily wrap ``part.bce`` and ``part.bbox_loss`` to record per-image numerators."""
    bce, bbox = part.bce, part.bbox_loss

    def bce_observed(pred: Tensor, target: Tensor) -> Tensor:
        out = bce(pred, target)
        rec.bce.append(out)  # class weights are applied in place afterwards: read later
        return out

    def bbox_observed(pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores,
                      target_scores_sum, fg_mask, imgsz, stride):
        result = bbox(pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores,
                      target_scores_sum, fg_mask, imgsz, stride)
        one = torch.ones((), device=target_scores.device, dtype=target_scores.dtype)
        box, dfl = [], []
        for i in range(pred_dist.shape[0]):  # the same module on image i alone: its numerators
            b, d = bbox(pred_dist[i:i + 1], pred_bboxes[i:i + 1], anchor_points, target_bboxes[i:i + 1],
                        target_scores[i:i + 1], one, fg_mask[i:i + 1], imgsz, stride)
            box.append(b)
            dfl.append(d)
        rec.box.append(torch.stack(box))
        rec.dfl.append(torch.stack(dfl))
        rec.tss.append(target_scores.sum(dim=(1, 2)))
        rec.tss_batch.append(target_scores_sum)
        return result

    part.bce, part.bbox_loss = bce_observed, bbox_observed
    try:
        yield
    finally:
        part.bce, part.bbox_loss = bce, bbox


@dataclass
class DetectionLossWithTerms:
    """Ultralytics' loss for a batch (``loss`` = criterion's first output, ``items`` = its
    loss-item dict) plus per-image terms ``[B, 3]`` and the per-image normalisers."""

    loss: Tensor
    items: dict[str, Tensor]
    terms: Tensor
    weights: Tensor  # [B]: sum_i weights[i] * terms[i] == loss / batch_size (per term)


def criterion_with_terms(criterion: Any, preds: Any, batch: dict[str, Any]) -> DetectionLossWithTerms:
    """Call ``criterion(preds, batch)`` exactly as Ultralytics does and return its loss
    together with the per-image terms it is made of."""
    parts = detection_parts(criterion)
    recs = [_Record() for _ in parts]
    with contextlib.ExitStack() as stack:
        for (part, _), rec in zip(parts, recs):
            stack.enter_context(_observe(part, rec))
        loss, items = criterion(preds, batch)
    terms = None
    weights = None
    for (part, weight_attr), rec in zip(parts, recs):
        if len(rec.bce) != 1 or len(rec.box) != 1:
            raise UnsupportedCriterionError(
                f"{type(part).__name__} did not call bce/bbox_loss once per loss evaluation "
                f"(this Ultralytics version changed the criterion); per-sample terms unavailable")
        tss = rec.tss[0].clamp(min=1)
        bce = rec.bce[0]
        cls = bce.reshape(bce.shape[0], -1).sum(1)
        hyp = part.hyp
        t = torch.stack([rec.box[0] / tss * hyp.box, cls / tss * hyp.cls, rec.dfl[0] / tss * hyp.dfl], 1)
        w = 1.0 if weight_attr is None else float(getattr(criterion, weight_attr))
        terms = t * w if terms is None else terms + t * w
        if weights is None:
            weights = (tss / rec.tss_batch[0].clamp(min=1)).detach()
    return DetectionLossWithTerms(loss=loss, items=items, terms=terms.float(), weights=weights.float())


def term_names(criterion: Any) -> list[str]:
    """Names of the three terms, from the criterion (``dfl`` becomes ``l1`` when reg_max=1)."""
    part = detection_parts(criterion)[0][0]
    return [n.removesuffix("_loss") for n in part.loss_names]


def data_identity(data: str | None) -> dict[str, Any]:
    """What an xi file of ``amat calibrate yolo`` records as its identity: the resolved data YAML."""
    from pathlib import Path

    return {"data": str(Path(str(data)).resolve())} if data else {}


def check_xi_file(path: str, data: str | None = None) -> None:
    """Refuse an xi file of another task (a landmark, nnU-Net or classic YOLOv5 file), of
    another number of terms, or calibrated on another data YAML: one line naming the fix."""
    from amat_hooks.state import XiFileError, read_xi_file

    try:
        xf = read_xi_file(path, fix=f"write it with `{XI_FIX}`")
        xf.check_task("yolo", fix=f"write one with `{XI_FIX}`")
        if xf.term_names and len(xf.term_names) != len(DETECTION_TERMS):
            raise XiFileError(f"xi file {xf.path} has {len(xf.term_names)} terms ({', '.join(xf.term_names)}), "
                              f"YOLO's detection loss has {len(DETECTION_TERMS)} ({', '.join(DETECTION_TERMS)}); "
                              f"write one with `{XI_FIX}`")
        xf.check_identity(data_identity(data), fix=XI_FIX.replace("<data.yaml>", str(data)))
    except XiFileError as e:
        raise AdvConfigError(str(e)) from None


def check_xi(cfg: AdvConfig | None, term_names: Sequence[str] = DETECTION_TERMS,
             floors: Sequence[float | None] = DETECTION_TERM_FLOORS) -> None:
    """Refuse AMAT thresholds that cannot work before any training step: not one per term,
    or at or below a term's floor (eq. 2 accepts a sample when every term is BELOW xi, so
    an xi at the floor is never met and AMAT would quietly become SAT at Delta)."""
    if cfg is None or cfg.mode != "amat" or cfg.xi is None:
        return
    xi, where = list(cfg.xi), cfg.xi_source or "--adv-xi / AdvConfig(xi=...)"
    names = ", ".join(term_names)
    if len(xi) != len(term_names):
        raise AdvConfigError(f"xi from {where} has {len(xi)} value(s) {xi}, YOLO's detection loss has "
                             f"{len(term_names)} terms ({names}); give one per term, e.g. --adv-xi 2.1,2.7,1.4, "
                             f"or --adv-xi-file from `{XI_FIX}`")
    for name, value, floor in zip(term_names, xi, floors):
        if floor is not None and value <= floor:
            raise AdvConfigError(f"xi for the {name} term is {value:g} (from {where}), but that term is never "
                                 f"below {floor:g}, so no sample could ever be accepted; give a value above "
                                 f"{floor:g} (xi = {', '.join(f'{v:g}' for v in xi)} for {names}) or calibrate "
                                 f"it with `{XI_FIX}`")


def is_yolo_batch(batch: Any) -> bool:
    return isinstance(batch, dict) and "img" in batch and "im_file" in batch


class YoloAdapter(BatchAdapter):
    """Ultralytics detection batches scored by the model's own ``criterion``.

    A trainer passes ``sample_ids`` (image paths relative to the dataset root), ``forward``
    (reuses the predictions ``DetectionModel.loss`` already computed for the clean input),
    ``record_items`` (Ultralytics' loss items of each training forward and whether it was the
    clean one: its progress columns and the separate clean / noisy loss metrics) and
    ``identity`` (what an xi file must have been calibrated on: :func:`data_identity`).
    """

    name = "Ultralytics detection batches, the model's own v8 criterion per image"
    calibrate_hint = "amat calibrate yolo model=<STD best.pt> data=<data.yaml>"
    input_bounds = (0.0, 1.0)
    protocol_kind = "yolo"

    def __init__(self, criterion: Any, sample_ids: Callable[[Sequence[str]], list[Hashable]] | None = None,
                 forward: Callable[[Any, Tensor, bool], Any] | None = None,
                 record_items: Callable[[dict, bool], None] | None = None,
                 identity: dict[str, Any] | None = None) -> None:
        detection_parts(criterion)  # clear error now if this criterion has no per-sample terms
        self.criterion = criterion
        self.term_names = tuple(term_names(criterion))  # l1 instead of dfl for reg_max=1 heads
        self.term_floors = DETECTION_TERM_FLOORS[:len(self.term_names)]
        self._ids, self._forward, self._record = sample_ids, forward, record_items
        self._identity = dict(identity or {})

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def inputs(self, batch: dict) -> Tensor:
        if not is_yolo_batch(batch):
            raise AdapterError("not an Ultralytics detection batch (a dict with img and im_file)")
        return batch["img"]

    def ids(self, batch: dict) -> list[Hashable]:
        files = [str(f) for f in batch["im_file"]]
        return self._ids(files) if self._ids is not None else files

    def with_inputs(self, batch: dict, x: Tensor) -> dict:
        """Same batch with ``img`` replaced; with k times the rows the targets are repeated and
        ``batch_idx`` shifted so each copy keeps its own boxes."""
        b = batch["img"].shape[0]
        k = stretch(b, x.shape[0], "YOLO batch")
        if k == 1:
            return {**batch, "img": x}
        out = {**batch, "img": x, "im_file": list(batch["im_file"]) * k}
        out["batch_idx"] = torch.cat([batch["batch_idx"] + j * b for j in range(k)])
        for key in ("cls", "bboxes"):
            out[key] = torch.cat([batch[key]] * k)
        return out

    def output_terms(self, batch: dict, output: Any) -> Tensor:
        return criterion_with_terms(self.criterion, output, {k: batch[k] for k in TARGET_KEYS}).terms

    def bind_loss(self, batch: dict, model: Any) -> BoundLoss:
        targets = {k: batch[k] for k in TARGET_KEYS}

        def terms(x: Tensor) -> Tensor:
            return criterion_with_terms(self.criterion, model(x), targets).terms

        def training(x: Tensor, clean: bool) -> tuple[Tensor, Tensor]:
            preds = self._forward(model, x, clean) if self._forward is not None else model(x)
            r = criterion_with_terms(self.criterion, preds, targets)
            if self._record is not None:
                self._record(r.items, clean)
            return r.loss.sum(), r.terms  # Ultralytics' convention: loss x batch size, summed

        return BoundLoss(terms=terms, training=training, term_names=list(self.term_names))
