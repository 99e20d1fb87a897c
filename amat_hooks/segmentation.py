"""Robustness evaluation of a plain segmentation model held in memory (the generic
segmentation task: the demo, tests, any user with tensors)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .evaluation import EvalBatch, EvalTask


class SegmentationEvalTask(EvalTask):
    """Robustness evaluation of a plain segmentation model on in-memory tensors.

    A sample is one image; ``loss_fn(output, target)`` is the per-sample training loss
    (the white-box attack objective). Metrics: ADI (primary) and TVDI over ``labels``.
    """

    name = "segmentation"
    metric = "ADI"
    higher_is_better = True

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 batch_size: int = 16, labels: Sequence[int] = (1,),
                 bounds: tuple[float, float] | None = None) -> None:
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[1:]:
            raise ValueError(f"images {tuple(x.shape)} and label maps {tuple(y.shape)} do not match "
                             f"(need [N, C, *S] and [N, *S])")
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.batch_size, self.labels, self.bounds = batch_size, list(labels), bounds

    def batches(self):
        for s in range(0, self.x.shape[0], self.batch_size):
            yield EvalBatch(key=f"{s}", x=self.x[s:s + self.batch_size], target=self.y[s:s + self.batch_size])

    def size(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def loss_terms(self, x: Tensor, target: Tensor, repeats: int) -> Tensor:
        return self.loss_fn(self.model(x), target.repeat(repeats, *([1] * (target.dim() - 1))))

    def measure(self, x: Tensor, target: Tensor):
        from .metrics import dice_counts

        return dice_counts(self.model(x).argmax(1), target, labels=self.labels).tolist()

    def reduce(self, stats):
        from .metrics import adi, tvdi

        counts = torch.tensor([row for s in stats for row in s], dtype=torch.float64)
        return {"ADI": adi(counts), "TVDI": tvdi(counts)}
