"""The runner's generic adapter: ``(x, y, ...)`` / dict batches of a script trained with a
``torch.nn`` loss module (:class:`CriterionAdapter`), and :class:`RunnerError`.

The runner never sees the script's loss code run on its own terms; what it needs of each
training batch is what every :class:`~amat_hooks.adapter.BatchAdapter` says: the input, the
batch with the clean and noisy rows, and the per-sample terms of a model OUTPUT the script's
forward produced (``output_terms``: the margin test then uses the noisy forward the script
trains on, with no extra forward pass). Adapters for other batch layouts answer the
``amat_adapter`` hook before this one (e.g. the Multi-Task U-Net's).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from amat_hooks.adapter import NON_NEGATIVE_LOSSES, AdapterError, TupleAdapter


class RunnerError(RuntimeError):
    """The runner cannot apply adversarial training to this script; says why and what to do.
    ``amat run`` prints it as one line (``amat run: refused: ...``) and exits with 3."""


class CriterionAdapter(TupleAdapter):
    """Generic ``(x, y, ...)`` / dict batches: the script's own ``torch.nn`` loss module,
    called on an unreduced copy (``reduction='none'``) and averaged per sample. Until the
    first step it is the first loss module the script created; after it, the one the script
    called on its training output."""

    name = "generic (x, y)"
    terms_known = True  # an nn loss module scores one term per sample

    def __init__(self, criterion: nn.Module | None) -> None:
        super().__init__(self._per_sample)
        self.criterion = criterion

    @property
    def term_floors(self):
        return (0.0,) if isinstance(self.criterion, NON_NEGATIVE_LOSSES) else None

    def describe(self) -> str:
        what = type(self.criterion).__name__ if self.criterion is not None else "(none found)"
        return f"generic (x, y) with the script's loss {what}"

    def _per_sample(self, output: Any, target: Any) -> Tensor:
        if self.criterion is None:
            raise RunnerError("cannot patch this script: no torch.nn loss module (e.g. nn.CrossEntropyLoss()) "
                              "was created, so the per-sample loss for the attack is unknown; create the loss "
                              "as a torch.nn module or add an adapter (amat_adapter, see docs/runner.md)")
        crit = copy.copy(self.criterion)
        crit.reduction = "none"
        if not isinstance(output, Tensor):
            raise RunnerError(f"the model returns a {type(output).__name__}, which the script's "
                              f"{type(self.criterion).__name__} cannot score per sample; add an adapter for this "
                              f"script (amat_adapter, see docs/runner.md)")
        try:
            v = crit(output, target)
        except (RuntimeError, ValueError, TypeError) as e:
            raise RunnerError(f"the script's {type(self.criterion).__name__} cannot score the model's output per "
                              f"sample ({str(e).splitlines()[0][:160]}); add an adapter for this script "
                              f"(amat_adapter, see docs/runner.md)") from None
        if v.dim() == 0:
            raise AdapterError(f"{type(self.criterion).__name__} with reduction='none' returned one number")
        return v.reshape(v.shape[0], -1).mean(1)

    def check_first_step(self, host: Any) -> None:
        called = [m for m in host.loss_calls if m is not self.criterion]
        if called and self.criterion not in host.loss_calls:
            self.criterion = called[0]
            host.amat_log(f"adapter: the script trains with its {type(self.criterion).__name__}; "
                          f"per-sample loss from that module from now on")


def unknown_structure(detail: str) -> str:
    return (f"cannot patch this script: the training batch has a structure no adapter knows ({detail}). "
            f"Built-in adapters: Multi-Task U-Net tuples (image, mask, heatmap, offset_y, offset_x, ...) and "
            f"generic (x, y) / dict batches with a torch.nn loss module; add one through the 'amat_hooks' "
            f"entry-point group (see docs/runner.md)")
