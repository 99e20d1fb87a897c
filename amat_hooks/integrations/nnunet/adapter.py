"""The nnU-Net adapter: an nnU-Net batch and per-sample terms from nnU-Net's OWN loss object.

Batch anatomy (:class:`NnUNetBatch`): input ``data`` (z-scored), ids ``(case key, slice)``,
targets as nnU-Net's loader makes them (a tensor, or the deep-supervision list).

Loss terms: nnU-Net's training loss is ``DeepSupervisionWrapper(DC_and_CE_loss |
DC_and_BCE_loss)``: CE (or BCE) + (negative) soft Dice over the deep-supervision outputs,
ignore label and regions handled inside. It reduces over the batch, so the per-sample value
of sample i is the same loss object applied to the one-sample batch ``[i:i+1]``. It can be
negative (Dice enters as -Dice), so xi must come from these same numbers (``amat calibrate``).

Under DDP with batch Dice the loss all-gathers its Dice statistics; the attack scores
samples a rank-dependent number of times, so per-sample scoring runs with the loss's ``ddp``
switches turned off. Nothing here imports nnU-Net.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.adapter import BatchAdapter, BoundLoss, repeat_rows, stretch

#: Name of the single loss term (K = 1) in logs and xi files.
TERM_NAMES = ("dc_ce",)


@dataclass
class NnUNetBatch:
    """One nnU-Net batch on the trainer's device.

    ``data`` ``[B, C, *patch]``, ``target`` a tensor or the deep-supervision list, ``ids``
    ``(case key, slice)`` per sample, ``bad`` ``[B]`` bool rows whose input was not finite
    (replaced by a finite row; their terms are reported as NaN so the core leaves their
    margins alone), ``clean_output`` the output nnU-Net's own ``train_step`` already computed
    for ``data`` (reused for the clean loss), ``valid`` ``[B, *patch]`` the pixels that are not
    padding (evaluation).
    """

    data: Tensor
    target: Tensor | Sequence[Tensor]
    ids: Sequence[Hashable] = ()
    bad: Tensor | None = None
    clean_output: Any = None
    valid: Tensor | None = None
    extra: dict = field(default_factory=dict)


@contextlib.contextmanager
def collectives_off(loss: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``ddp = False`` on every (sub)module of the loss that has it."""
    changed = []
    modules = loss.modules() if isinstance(loss, nn.Module) else []
    for m in modules:
        if getattr(m, "ddp", False) is True:
            changed.append(m)
            m.ddp = False
    try:
        yield loss
    finally:
        for m in changed:
            m.ddp = True


def _as_list(v: Any) -> list[Tensor]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def per_sample_terms(loss: nn.Module, output: Tensor | Sequence[Tensor],
                     target: Tensor | Sequence[Tensor], deep_supervision: bool) -> Tensor:
    """``[B, 1]`` per-sample values of the trainer's loss; differentiable w.r.t. ``output``.

    ``deep_supervision``: whether ``loss`` takes lists (``DeepSupervisionWrapper``).
    """
    outs, tgts = _as_list(output), _as_list(target)
    batch = outs[0].shape[0]
    values = []
    with collectives_off(loss):
        for i in range(batch):
            o = [t[i:i + 1] for t in outs]
            g = [t[i:i + 1] for t in tgts]
            v = loss(o, g) if deep_supervision else loss(o[0], g[0])
            values.append(torch.as_tensor(v, dtype=torch.float32, device=outs[0].device).reshape(()))
    return torch.stack(values).float().unsqueeze(1)


def _unwrap(model: nn.Module) -> nn.Module:
    """The attack scores samples through the bare network: under DDP its forward must not
    arm the gradient reducer (the attack only takes gradients w.r.t. the input)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def hard_dice_max(logits: Tensor, labels: Tensor) -> Tensor:
    """Per sample, the authors' acceptance score: the hard (argmax) Dice ``2TP / (2TP + FP + FN
    + 1e-8)`` of each foreground class, max over classes (a class absent from both scores 0)."""
    b = logits.shape[0]
    pred, lab = logits.argmax(1).reshape(b, -1), labels.reshape(b, -1).long()
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = pred == c, lab == c
        tp = (p & t).sum(1).double()
        scores.append(2 * tp / (2 * tp + (p & ~t).sum(1) + (~p & t).sum(1) + 1e-8))
    return torch.stack(scores, 1).max(1).values.float() if scores else torch.zeros(logits.shape[0], device=logits.device)


class NnUNetAdapter(BatchAdapter):
    """:class:`NnUNetBatch` es scored by the trainer's own ``loss`` object (see the module docstring).

    ``terms="authors"`` (:meth:`configure`): a second, gradient-free column ``1 - hard Dice``
    (max over foreground classes, full resolution): with xi ``[never, 1 - threshold]`` the
    acceptance test is the authors' Dice >= threshold (nnUNetTrainerV2.py:339-361).
    """

    name = "nnU-Net (case, slice) batches, the trainer's own loss per sample"
    term_names = TERM_NAMES
    term_floors = (None,)  # CE + (-Dice) goes below 0
    protocol_kind = "nnunet"

    def __init__(self, loss: nn.Module, deep_supervision: bool, calibrate_hint: str = "amat calibrate nnunet") -> None:
        self.loss, self.deep_supervision = loss, bool(deep_supervision)
        self.calibrate_hint = calibrate_hint
        self.dice_acceptance = False

    def configure(self, config: Any) -> None:
        self.dice_acceptance = getattr(config, "terms", None) == "authors"
        self.term_names = TERM_NAMES + ("1-dice_max",) if self.dice_acceptance else TERM_NAMES
        self.term_floors = (None, 0.0) if self.dice_acceptance else (None,)

    def inputs(self, batch: NnUNetBatch) -> Tensor:
        return batch.data

    def ids(self, batch: NnUNetBatch) -> Sequence[Hashable]:
        return list(batch.ids)

    def with_inputs(self, batch: NnUNetBatch, x: Tensor) -> NnUNetBatch:
        b = batch.data.shape[0]
        k = stretch(b, x.shape[0], "nnU-Net batch")
        if k == 1:
            return dataclasses.replace(batch, data=x, clean_output=None)
        return dataclasses.replace(batch, data=x, target=repeat_rows(batch.target, b, k), ids=list(batch.ids) * k,
                                   bad=None if batch.bad is None else batch.bad.repeat(k), clean_output=None,
                                   valid=repeat_rows(batch.valid, b, k))

    def output_terms(self, batch: NnUNetBatch, output: Any) -> Tensor:
        terms = per_sample_terms(self.loss, output, batch.target, self.deep_supervision)
        if self.dice_acceptance:
            logits, labels = _as_list(output)[0].detach(), _as_list(batch.target)[0]
            terms = torch.cat([terms, (1 - hard_dice_max(logits, labels)).unsqueeze(1)], 1)
        return self._mark(terms, batch.bad)

    @staticmethod
    def _mark(terms: Tensor, bad: Tensor | None) -> Tensor:
        """Rows whose input was not finite were replaced: report NaN so the core skips them."""
        if bad is None or not bool(bad.any()):
            return terms
        return torch.where(bad.to(terms.device).unsqueeze(1), torch.full_like(terms, float("nan")), terms)

    def bind_loss(self, batch: NnUNetBatch, model: nn.Module) -> BoundLoss:
        attack_net = _unwrap(model)

        def training(x: Tensor, clean: bool) -> tuple[Tensor, Tensor]:
            # the step's clean forward already ran inside nnU-Net's own train_step
            output = batch.clean_output if clean and batch.clean_output is not None else model(x)
            loss = self.loss(output, batch.target)  # nnU-Net's scalar loss (DDP batch Dice as nnU-Net does it)
            with torch.no_grad():
                det = [o.detach() for o in output] if isinstance(output, (list, tuple)) else output.detach()
                terms = self.output_terms(batch, det)
            return loss, terms

        return BoundLoss(terms=lambda x: self.output_terms(batch, attack_net(x)), training=training,
                         term_names=list(self.term_names))


def replace_non_finite_rows(data: Tensor, target) -> tuple[Tensor, Any, Tensor]:
    """Rows with NaN/inf input get a copy of the first finite row (so batch size and DDP
    collectives are unchanged); returns the bool mask of replaced rows."""
    bad = ~torch.isfinite(data.flatten(1)).all(dim=1)
    if not bool(bad.any()):
        return data, target, bad
    good = (~bad).nonzero()[:, 0]
    data = data.clone()
    if good.numel() == 0:
        data[bad] = 0.0
        return data, target, bad
    src = int(good[0])
    data[bad] = data[src].clone()
    if isinstance(target, list):
        target = [t.clone() for t in target]
        for t in target:
            t[bad] = t[src].clone()
    else:
        target = target.clone()
        target[bad] = target[src].clone()
    return data, target, bad
