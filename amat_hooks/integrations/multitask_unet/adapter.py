"""The Multi-Task U-Net adapter: how its batches look and its three per-sample loss terms.

A batch is ``(image, mask, heatmap, offset_y, offset_x[, landmarks, ...])`` - the tuple the
original ``Cephalometric`` dataset yields - or a dict with keys ``image``, ``mask``,
``heatmap``, ``offset_y``, ``offset_x`` (and ``ids``). The model returns ``(heatmap,
offset_y, offset_x)``. Terms ``[B, 3]``: heatmap (BCE as in the original code, or Dice as the
AMAT paper prefers), masked L1 of the x offsets, masked L1 of the y offsets. Averaged over
the batch, these are the terms the example script computes inline (tests check that).

Which heatmap term (:class:`LandmarkAdapter`, ``heatmap_loss``):

* ``auto`` (``amat run``'s default): BCE if the script created an ``nn.BCELoss`` (the public
  code always does), else Dice; confirmed after the script computed its first loss, before
  its first optimizer step (:meth:`LandmarkAdapter.check_first_step`). A wrong guess is
  corrected then (only the first batch's noise was made against the guessed term; the log
  says so).
* ``dice`` / ``bce``: the user's word; a script that contradicts it is refused before its
  first optimizer step, so nothing is trained and no state is written.

A script that computes BCE with ``F.binary_cross_entropy`` and creates no ``nn.BCELoss``
cannot be told from Dice: pass ``--heatmap-loss bce``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amat_hooks.adapter import AdapterError, BatchAdapter, repeat_rows, stretch

TERM_NAMES = ("heatmap", "offset_x", "offset_y")
HEATMAP_LOSSES = ("bce", "dice")


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per sample: sum |pred - target| * mask / sum mask over (L, H, W) -> ``[B]``."""
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"offset prediction {tuple(pred.shape)}, target {tuple(target.shape)} and "
                         f"mask {tuple(mask.shape)} must have the same shape")
    b = pred.shape[0]
    num = ((pred - target).abs() * mask).reshape(b, -1).sum(1)
    return num / mask.reshape(b, -1).sum(1).clamp_min(1e-12)


def dice_loss(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Per sample: mean over landmark channels of 1 - (2 sum pt + s) / (sum p + sum t + s)."""
    if pred.shape != target.shape:
        raise ValueError(f"heatmap {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    p, t = pred.flatten(2), target.flatten(2)
    dice = (2 * (p * t).sum(2) + smooth) / (p.sum(2) + t.sum(2) + smooth).clamp_min(1e-12)
    return (1 - dice).mean(1)


def bce_per_sample(pred: Tensor, target: Tensor,
                   criterion: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Per sample mean BCE. ``criterion``: the trainer's own ``nn.BCELoss`` (it is called
    unreduced, so its weight is kept) or None for ``F.binary_cross_entropy``."""
    if criterion is None:
        v = F.binary_cross_entropy(pred, target, reduction="none")
    else:
        c = copy.copy(criterion)
        c.reduction = "none"
        v = c(pred, target)
    return v.reshape(v.shape[0], -1).mean(1)


def landmark_terms(outputs: tuple[Tensor, Tensor, Tensor], mask: Tensor, heatmap_target: Tensor,
                   offset_y: Tensor, offset_x: Tensor, heatmap_loss: str = "dice",
                   bce: Callable[[Tensor, Tensor], Tensor] | None = None, smooth: float = 1.0,
                   weight: float = 1.0) -> Tensor:
    """``[B, 3]`` = (heatmap term, masked L1 x, masked L1 y) for model outputs
    ``(heatmap, offset_y, offset_x)``."""
    if heatmap_loss not in HEATMAP_LOSSES:
        raise ValueError(f"unknown heatmap loss {heatmap_loss!r}; choose one of {HEATMAP_LOSSES}")
    if not (isinstance(outputs, (tuple, list)) and len(outputs) == 3):
        raise ValueError("the Multi-Task U-Net must return (heatmap, offset_y, offset_x); got "
                         f"{type(outputs).__name__}")
    heatmap, reg_y, reg_x = outputs
    if heatmap_loss == "dice":
        h = weight * dice_loss(heatmap, heatmap_target, smooth)
    else:
        h = bce_per_sample(heatmap, heatmap_target, bce)
    return torch.stack([h, masked_l1(reg_x, offset_x, mask), masked_l1(reg_y, offset_y, mask)], dim=1)


# -- batch anatomy --------------------------------------------------------------------------------
_DICT_KEYS = ("image", "mask", "heatmap", "offset_y", "offset_x")
HEATMAP_CHOICES = ("auto", "dice", "bce")


def landmark_maps(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """(image, mask, heatmap, offset_y, offset_x) if ``batch`` looks like a landmark batch."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 5:
        items = batch[:5]
    elif isinstance(batch, dict) and all(k in batch for k in _DICT_KEYS):
        items = [batch[k] for k in _DICT_KEYS]
    else:
        return None
    if not all(isinstance(t, Tensor) for t in items):
        return None
    x, m = items[0], items[1]
    if x.dim() != 4 or m.dim() != 4 or m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
        return None
    if any(t.shape != m.shape for t in items[2:]):
        return None
    return tuple(items)  # type: ignore[return-value]


class LandmarkAdapter(BatchAdapter):
    """Multi-Task U-Net batches and their three terms (see the module docstring).

    ``heatmap_loss``: ``dice``, ``bce`` or ``auto`` (inferred from ``loss_modules``, the
    script's ``torch.nn`` loss modules, and confirmed at the first step).
    """

    name = "Multi-Task U-Net"
    term_names = TERM_NAMES
    term_floors = (0.0, 0.0, 0.0)  # Dice loss, BCE and L1 are >= 0
    calibrate_hint = "amat calibrate landmark --checkpoint CLEAN.pth --data DATA"
    input_bounds = (-1.0, 1.0)  # images normalised to [-1, 1]
    protocol_kind = "landmark"
    #: ``trainer``: the heatmap term the script trains with; ``authors``: their 0.5 x Dice
    #: against the binary mask, no smoothing (amat_conf landmark_detection/metric.py:4-16, 60-81)
    terms = "trainer"

    def __init__(self, heatmap_loss: str = "auto", loss_modules: Sequence[nn.Module] = (),
                 given_by: str = "given") -> None:
        if heatmap_loss not in HEATMAP_CHOICES:
            raise AdapterError(f"unknown heatmap loss {heatmap_loss!r}; choose one of {', '.join(HEATMAP_CHOICES)}")
        self.requested = heatmap_loss
        self.bces = [m for m in loss_modules if isinstance(m, nn.BCELoss)]
        self.bce: nn.Module | None = self.bces[0] if self.bces else None
        if heatmap_loss != "auto":
            self.kind, self.source = heatmap_loss, given_by
        elif self.bces:
            self.kind, self.source = "bce", "inferred: the script created an nn.BCELoss"
        else:
            self.kind, self.source = "dice", ("inferred: the script created no nn.BCELoss (a functional BCE "
                                              "needs --heatmap-loss bce)")
        self.confirmed = False

    def describe(self) -> str:
        check = "" if self.confirmed or not self.bces else ", checked before the first optimizer step"
        return f"{self.name} (heatmap term: {self.kind}; {self.source}{check})"

    def inputs(self, batch: Any) -> Tensor:
        return self._maps(batch)[0]

    def ids(self, batch: Any) -> Sequence[Hashable] | None:
        if isinstance(batch, dict):
            for key in ("ids", "id", "index"):
                if key in batch:
                    ids = batch[key]
                    return ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return None  # tuple batches carry no ids: amat run supplies them from the DataLoader

    def with_inputs(self, batch: Any, x: Tensor) -> Any:
        b = self._maps(batch)[0].shape[0]
        k = stretch(b, x.shape[0], "landmark batch")
        if isinstance(batch, dict):
            return {kk: (x if kk == "image" else repeat_rows(v, b, k)) for kk, v in batch.items()}
        rest = [repeat_rows(v, b, k) for v in batch[1:]]
        return type(batch)([x, *rest]) if isinstance(batch, list) else (x, *rest)

    def configure(self, config: Any) -> None:
        self.terms = getattr(config, "terms", None) or "trainer"

    def output_terms(self, batch: Any, output: Any) -> Tensor:
        _, mask, heatmap, offset_y, offset_x = self._maps(batch)
        if self.terms == "authors":
            return landmark_terms(output, mask, mask, offset_y, offset_x, heatmap_loss="dice", smooth=0.0, weight=0.5)
        return landmark_terms(output, mask, heatmap, offset_y, offset_x, heatmap_loss=self.kind,
                              bce=self.bce if self.kind == "bce" else None)

    def _maps(self, batch: Any):
        maps = landmark_maps(batch)
        if maps is None:
            raise AdapterError("not a Multi-Task U-Net batch (image, mask, heatmap, offset_y, offset_x, ...)")
        return maps

    def check_first_step(self, host: Any) -> None:
        """The script's first loss: did it call its ``nn.BCELoss`` on the training output?"""
        if not self.bces:  # no nn.BCELoss module: Dice or a functional BCE, nothing to see
            self.confirmed = True
            return
        called = [m for m in host.loss_calls if isinstance(m, nn.BCELoss)]
        seen = "bce" if called else "dice"
        self.confirmed = True
        if called:
            self.bce = called[0]
        if seen == self.kind:
            return
        what = ("calls its nn.BCELoss on the training output" if called
                else "creates an nn.BCELoss but does not call it on the training output")
        if self.requested != "auto":
            raise AdapterError(f"the script {what}, but --heatmap-loss {self.kind} was given: the attack and xi "
                              f"must use the loss the script trains with; pass --heatmap-loss {seen} (or leave "
                              f"it out: auto)")
        host.amat_log(f"heatmap term: {seen}, not {self.kind} - the script {what}; the first batch's noise was "
                      f"made against {self.kind} (pass --heatmap-loss {seen} to avoid that)")
        self.kind, self.source = seen, f"inferred: the script {what}"

    def identity(self) -> dict[str, Any]:
        return {"heatmap_loss": self.kind if self.terms == "trainer" else "authors (0.5 Dice vs mask)"}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "heatmap_loss": self.kind, "terms": self.terms}
