"""What an adapter tells ``amat run`` about a script's loss: :class:`ScriptLoss`.

The runner never sees the script's loss code run on its own terms; it needs, for each
training batch, the per-sample loss terms ``[B, K]``

* as a function of the input (the attack objective: ``bound_loss(batch, model)``), and
* of a model OUTPUT the script's forward produced (``terms(batch, output)``): the margin
  test of Algorithm 1 (line 9) then uses the noisy forward the script trains on, with no
  extra forward pass.

Adapters return a :class:`ScriptLoss` from the ``amat_runner_loss`` hook (called once,
with the first training batch). The runner's own fallbacks live here too: a third-party
adapter that only implements ``amat_bind_loss`` (:class:`BoundLossScriptLoss`), and generic
``(x, y)`` loops trained with a ``torch.nn`` loss module (:class:`CriterionScriptLoss`).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from torch import Tensor, nn

from amat_hooks.policies import BoundLoss


class RunnerError(RuntimeError):
    """The runner cannot apply adversarial training to this script; says why and what to do.
    ``amat run`` prints it as one line (``amat run: refused: ...``) and exits with 3."""


class ScriptLoss:
    """The per-sample loss terms of a script's batches (base class; see the module docstring).

    ``name`` and :meth:`describe` go into the runner's log; ``term_names`` and :meth:`state`
    into its sidecars; :meth:`identity` is checked against an ``--adv-xi-file``.
    """

    name = "script loss"
    term_names: Sequence[str] = ("loss",)
    #: the command that computes xi from a clean model of this kind (named when xi falls
    #: back to the online estimate)
    calibrate_hint = "amat calibrate <task>"

    def describe(self) -> str:
        """One line: which adapter and which loss (``adapter: ...`` in the log)."""
        return self.name

    def terms(self, batch: Any, output: Any) -> Tensor | None:
        """Per-sample terms ``[B]`` or ``[B, K]`` of a model ``output`` (B rows) for the
        targets of ``batch`` (the script's batch of B rows). None: this adapter cannot, and
        the runner spends one extra forward pass per batch on the noisy rows instead."""
        return None

    def bound_loss(self, batch: Any, model: nn.Module) -> BoundLoss:
        """The attack objective of ``batch``: terms as a function of the input."""
        def terms(x: Tensor) -> Tensor:
            t = self.terms(batch, model(x))
            if t is None:
                raise NotImplementedError(f"{type(self).__name__} gives no terms of an output; "
                                          f"override bound_loss")
            return t

        return BoundLoss(terms=terms, term_names=list(self.term_names))

    def confirm(self, host: Any) -> None:
        """Called once, after the script computed its loss on the first training batch and
        before its first optimizer step (``host.loss_calls``: the script's ``torch.nn`` loss
        modules it called on a training output). Refine a guess here, or raise
        :class:`RunnerError` when the script contradicts the user's flags."""

    def identity(self) -> dict[str, Any]:
        """What an xi file must have been calibrated for (keys of its ``identity``)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Written into ``amat_state.json`` / ``CKPT.amat.json`` (top level)."""
        return {"term_names": list(self.term_names)}


class CriterionScriptLoss(ScriptLoss):
    """Generic ``(x, y, ...)`` / dict batches: the script's own ``torch.nn`` loss module,
    called on an unreduced copy (``reduction='none'``) and averaged per sample. Until the
    first step it is the first loss module the script created; after it, the one the script
    called on its training output."""

    name = "generic (x, y)"
    term_names = ("loss",)

    def __init__(self, criterion: nn.Module | None) -> None:
        self.criterion = criterion

    def describe(self) -> str:
        what = type(self.criterion).__name__ if self.criterion is not None else "(none found)"
        return f"generic (x, y) with the script's loss {what}"

    def _unreduced(self) -> nn.Module:
        if self.criterion is None:
            raise RunnerError("cannot patch this script: no torch.nn loss module (e.g. nn.CrossEntropyLoss()) "
                              "was created, so the per-sample loss for the attack is unknown; create the loss "
                              "as a torch.nn module or add an adapter (amat_runner_loss, see docs/runner.md)")
        crit = copy.copy(self.criterion)
        crit.reduction = "none"
        return crit

    def terms(self, batch: Any, output: Any) -> Tensor:
        from amat_hooks.integrations.torch_loop import batch_target

        v = self._unreduced()(output, batch_target(batch))
        return v.reshape(v.shape[0], -1).mean(1)

    def confirm(self, host: Any) -> None:
        called = [m for m in host.loss_calls if m is not self.criterion]
        if called and self.criterion not in host.loss_calls:
            self.criterion = called[0]
            host.amat_log(f"adapter: the script trains with its {type(self.criterion).__name__}; "
                          f"per-sample loss from that module from now on")


class BoundLossScriptLoss(ScriptLoss):
    """A third-party adapter that answers ``amat_bind_loss`` for the script's batches but
    not ``amat_runner_loss``: its bound loss is the attack objective; the margin test costs
    one extra forward of the noisy rows (implement ``amat_runner_loss`` to avoid it)."""

    name = "adapter (amat_bind_loss)"

    def __init__(self, host: Any, first: BoundLoss) -> None:
        self.host = host
        self.term_names = tuple(first.term_names or ("loss",))

    def bound_loss(self, batch: Any, model: nn.Module) -> BoundLoss:
        bl = self.host.pm.hook.amat_bind_loss(batch=batch, model=model, host=self.host)
        if bl is None:
            raise RunnerError("the adapter that bound the first training batch (amat_bind_loss) returned "
                              "None for a later one")
        return bl
