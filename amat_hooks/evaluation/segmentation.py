"""Robustness evaluation of a plain segmentation model held in memory (the generic
segmentation task: the demo, tests, any user with tensors)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.adapter import TupleAdapter, repeat_rows
from amat_hooks.evaluation.task import EvalBatch, EvalTask
from amat_hooks.evaluation.objectives import SegmentationObjectives


class SegmentationEvalTask(SegmentationObjectives, EvalTask):
    """Robustness evaluation of a plain segmentation model on in-memory tensors.

    A sample is one image (2D ``[N, C, H, W]`` or 3D ``[N, C, D, H, W]``); ``loss_fn(output,
    target)`` is the per-sample training loss (the ``pgd``/``ifgsm`` objective); the model's
    output is the logits ``[N, classes, *S]`` (the ``segpgd``/``cospgd``/``mce`` objectives).
    Metrics: ADI (primary) and TVDI over ``labels``; ``valid`` (``[N, *S]`` bool, optional)
    marks the pixels that count (the others are scored as background and ignored by the
    segmentation objectives).
    """

    name = "segmentation"
    metric = "ADI"
    higher_is_better = True

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 batch_size: int = 16, labels: Sequence[int] = (1,),
                 bounds: tuple[float, float] | None = None, valid: Tensor | None = None) -> None:
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[1:]:
            raise ValueError(f"images {tuple(x.shape)} and label maps {tuple(y.shape)} do not match "
                             f"(need [N, C, *S] and [N, *S])")
        if valid is not None and valid.shape != y.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} does not match the label maps {tuple(y.shape)}")
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.adapter = TupleAdapter(loss_fn)
        self.batch_size, self.labels, self.bounds = batch_size, list(labels), bounds
        self.valid = valid.bool() if valid is not None else None

    def batches(self):
        for s in range(0, self.x.shape[0], self.batch_size):
            sl = slice(s, s + self.batch_size)
            target = {"x": self.x[sl], "y": self.y[sl]}
            if self.valid is not None:
                target["valid"] = self.valid[sl]
            yield EvalBatch(key=f"{s}", x=self.x[sl], target=target)

    def size(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def measure(self, x: Tensor, target):
        from amat_hooks.evaluation.metrics import dice_counts

        y, valid = target["y"], target.get("valid")
        pred = self.model(x).argmax(1)
        if valid is not None:
            pred, y = pred * valid, y * valid
        return dice_counts(pred, y, labels=self.labels).tolist()

    def trivial_stats(self, target):
        """Constant masks (background, each label): the masking check's floor is the best of them."""
        from amat_hooks.evaluation.metrics import dice_counts

        y, valid = target["y"], target.get("valid")
        out = {}
        for c in (0, *self.labels):
            pred = torch.full_like(y, c)
            pred, yy = (pred * valid, y * valid) if valid is not None else (pred, y)
            out[f"constant mask of label {c}"] = dice_counts(pred, yy, labels=self.labels).tolist()
        return out

    def reduce(self, stats):
        from amat_hooks.evaluation.metrics import adi, tvdi

        counts = torch.tensor([row for s in stats for row in s], dtype=torch.float64)
        return {"ADI": adi(counts), "TVDI": tvdi(counts)}

    def sample_scores(self, stats) -> list[float]:
        from amat_hooks.evaluation.metrics import dice_from_counts

        return dice_from_counts(torch.tensor(stats, dtype=torch.float64).reshape(-1, 3)).tolist()

    # -- the segmentation objectives (amat_hooks.evaluation.objectives.SegmentationObjectives) -----------
    def segmentation_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def segmentation_labels(self, target, repeats: int) -> Tensor:
        return repeat_rows(target["y"], target["y"].shape[0], repeats)

    def segmentation_valid(self, target, repeats: int) -> Tensor | None:
        valid = target.get("valid")
        return None if valid is None else repeat_rows(valid, valid.shape[0], repeats)
