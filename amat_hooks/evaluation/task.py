"""What an integration supplies to evaluate one model: :class:`EvalTask` and its batches."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torch import Tensor, nn

from amat_hooks.adapter import BatchAdapter


class AttackNotSupported(ValueError):
    """An attack the task cannot run (a segmentation objective on a detection task)."""


@dataclass(frozen=True)
class Objective:
    """An attack objective a task aims at its own metric (a landmark's predicted location, the
    detections mAP scores), run by the core through the one :func:`amat_hooks.attacks.pgd`.

    ``terms(x, target, repeats)`` returns per-sample terms ``[repeats*B]`` or ``[repeats*B, K]``
    to ascend, for inputs that hold the batch ``repeats`` times (level-major, as
    :meth:`EvalTask.loss_terms`). ``about``: what it does, in words (the report's caption);
    ``short``: the table's column prefix; ``in_worst``: part of ``worst`` without being listed
    (the training loss stops tracking the metric at larger noise, so the quoted worst case needs it).
    """

    terms: Callable[[Tensor, Any, int], Tensor]
    about: str
    short: str = ""
    in_worst: bool = True


@dataclass
class EvalBatch:
    """One evaluation batch: ``key`` identifies it for resume (stable across runs); ``x`` the
    input the attack perturbs; ``target`` the trainer's own batch (as the task's adapter reads it);
    ``ids``: the samples' training ids, as the trainer keys their margins (calibration batches,
    for ``amat calibrate --margins-out``), None where the task cannot say."""

    key: str
    x: Tensor
    target: Any
    ids: list | None = None


class EvalTask(ABC):
    """What an integration provides to evaluate one model.

    ``measure`` returns JSON-able per-batch statistics (e.g. per-sample TP/FP/FN, or
    per-image detections) and ``reduce`` turns the list of them into metric values. The
    attack objective is the trainer's loss as its ``adapter`` states it (the same object
    training uses), so a trainer writes its loss once.
    """

    name: str = "task"
    metric: str = "score"             # the primary metric (the table's value)
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None
    model: nn.Module
    adapter: BatchAdapter | None = None

    @abstractmethod
    def batches(self) -> Iterable[EvalBatch]: ...

    def loss_terms(self, x: Tensor, target: Any, repeats: int) -> Tensor:
        """Per-sample training-loss terms ``[repeats*B, K]`` for inputs ``x`` that hold the
        batch ``repeats`` times (level-major); ``target`` is the batch's own target. Default:
        the adapter's terms of the model's output, the batch stretched to ``x``'s rows."""
        if self.adapter is None:
            raise NotImplementedError(f"{type(self).__name__} sets no adapter; set one or override loss_terms")
        return self.adapter.output_terms(self.adapter.with_inputs(target, x), self.model(x))

    @abstractmethod
    def measure(self, x: Tensor, target: Any) -> Any: ...

    @abstractmethod
    def reduce(self, stats: list[Any]) -> dict[str, float]: ...

    def size(self) -> int | None:
        """Number of batches, for the progress display (None if unknown)."""
        return None

    def objectives(self) -> dict[str, Objective]:
        """Attack objectives aimed at this task's metric, by ``--attacks`` name (none by default)."""
        return {}

    def trivial_stats(self, target: Any) -> dict[str, Any] | None:
        """:meth:`measure`'s statistics of the task's trivial predictions on this batch, by
        name (a constant mask, no detection): what a model that ignores its input scores.
        The best of them is the gradient-masking check's floor; None: not known (then
        :attr:`metric_floor`)."""
        return None

    def describe_scored(self, samples: int) -> str:
        """What was scored, for the table caption (e.g. "412 slices of 8 cases")."""
        return f"{samples} samples"

    #: the worst value the primary metric can take (Dice: 0); None where it has none (MRE).
    #: The gradient-masking check asks whether the largest level gets near it, unless the
    #: task's trivial predictions (:meth:`trivial_stats`) give a floor.
    metric_floor: float | None = None

    def floor(self) -> float | None:
        if self.metric_floor is not None:
            return float(self.metric_floor)
        return 0.0 if self.higher_is_better else None

    def sample_scores(self, stats: Any) -> list[float]:
        """The primary metric of each sample of one :meth:`measure` output (``worst``, the
        radius threshold and the per-sample JSON need one entry per sample). Default: ``reduce``
        over each sample alone; override where that is slow or not per sample."""
        return [float(self.reduce([[row]])[self.metric]) for row in stats]


def not_segmentation(task: "EvalTask", what: str) -> str:
    aimed = list(task.objectives())
    attacks = ",".join(["pgd", "ifgsm", *aimed, "worst"])
    radius = ", ".join(["loss", *aimed])
    return (f"{what} needs a segmentation task (one that implements segmentation_logits and "
            f"segmentation_labels, see amat_hooks.evaluation.objectives.SegmentationObjectives); the {task.name} "
            f"task supports --attacks {attacks} and --radius-objective {radius}")


def score_rows(task: EvalTask, rows: list) -> list[float]:
    return [float(v) for v in task.sample_scores(rows)]
