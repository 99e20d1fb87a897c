"""Hook specifications of amat-hooks, grouped by phase (modelled on pytest's hookspec.py).

An adapter (a plugin) describes ONE kind of trainer batch: where the input is, which
sample ids it carries, how to put a perturbed input back and how to get per-sample loss
terms. A ``firstresult`` hook stops at the first non-None answer; an adapter returns
``None`` for a batch that is not its kind and the next plugin is asked. Plugins
registered later (entry points) are asked first; the generic sniffers of the plain
PyTorch adapter are ``trylast``, so any specific adapter wins over them.

Every hook receives the ``host``: what drives training (an nnU-Net trainer, an
Ultralytics trainer, :class:`~amat_hooks.integrations.torch_loop.AdversarialLoop`, the
``amat run`` runner). Adapters recognise their own host by type; the core only needs
what :class:`Host` names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Protocol, Sequence, runtime_checkable

import pluggy

if TYPE_CHECKING:
    import argparse

    from torch import Tensor, nn

    from amat_hooks.run.loss import ScriptLoss
    from amat_hooks.policies import BoundLoss
    from amat_hooks.tasks import Task

PROJECT = "amat_hooks"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@runtime_checkable
class Host(Protocol):
    """What the core asks of a training host: a place for its log lines (the policy's
    one-line notices, e.g. where xi came from) and the per-epoch summaries that
    :func:`amat_epoch_end` records (written into checkpoints and sidecars)."""

    amat_history: list[dict[str, float]]

    def amat_log(self, message: str) -> None: ...


# -------------------------------------------------------------------------------------
# Batch anatomy: what the adapter knows about its trainer's batches.
# -------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def amat_batch_inputs(batch: Any, host: Any) -> "Tensor | None":
    """Return the input tensor ``[B, ...]`` of ``batch`` that the attack perturbs.

    :param batch: the trainer's batch, as its data loader yields it.
    :param host: the training host (see :class:`Host`).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_batch_sample_ids(batch: Any, host: Any) -> "Sequence[Hashable] | None":
    """Return one hashable id per sample of ``batch`` (file name, case + slice, index).

    AMAT keys its margins by these ids, so they must be stable across epochs.

    :param batch: the trainer's batch.
    :param host: the training host.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_batch_with_inputs(batch: Any, inputs: "Tensor", host: Any) -> Any:
    """Return a batch like ``batch`` whose input is ``inputs``.

    :param batch: the trainer's batch of B samples.
    :param inputs: ``[k*B, ...]``: the perturbed input, or clean and noisy rows stacked
        (the runner's ``--adv-batch joint`` option); targets are repeated k times.
    :param host: the training host.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_bind_loss(batch: Any, model: "nn.Module", host: Any) -> "BoundLoss | None":
    """Return a :class:`~amat_hooks.policies.BoundLoss` for ``batch``: per-sample loss terms
    ``[B, K]`` as a function of the input, from the trainer's OWN loss objects, and
    optionally the trainer's scalar loss of the same forward pass.

    :param batch: the trainer's batch (its targets are bound into the loss).
    :param model: the network the attack differentiates (unwrapped from DDP if needed).
    :param host: the training host.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_runner_loss(batch: Any, host: Any) -> "ScriptLoss | None":
    """``amat run`` only: describe the loss an unmodified training script computes on its
    batches, so that the runner can attack it and test the per-sample terms of the script's
    own noisy forward against xi (no extra forward pass).

    Called once, with the first training batch; the returned
    :class:`~amat_hooks.run.ScriptLoss` serves every later batch: its
    ``bound_loss(batch, model)`` is the attack objective, ``terms(batch, output)`` the
    per-sample terms ``[B, K]`` of a model output, ``confirm(host)`` is called after the
    script computed its loss on the first batch and before its first optimizer step (to
    check or refine what was inferred; raise ``RunnerError`` to refuse the run).

    :param batch: the script's first training batch, as its DataLoader yields it (no ids).
    :param host: the runner (:class:`~amat_hooks.run.Runner`):
        ``host.options`` holds the parsed ``amat run`` flags (an adapter adds its own to the
        ``run`` parser in :func:`amat_add_commands`, which the runner creates first),
        ``host.loss_modules`` the ``torch.nn`` loss modules the script created (in order),
        ``host.loss_calls`` (in ``confirm``) those it called on a training output.

    Return None for a batch that is not your kind. Stops at the first non-None result; the
    runner's generic ``(x, y)`` answer is ``trylast``. Implemented by the Multi-Task U-Net
    adapter (heatmap BCE or Dice, inferred from the script's ``nn.BCELoss``).
    """


# -------------------------------------------------------------------------------------
# Training progress: every implementation is called; return values are ignored.
# -------------------------------------------------------------------------------------
@hookspec
def amat_epoch_end(epoch: int, summary: "dict[str, float]", host: Any) -> None:
    """Called once per epoch, after the margins of all ranks were merged.

    :param epoch: the host's epoch counter (0-based).
    :param summary: the policy summary: ``margin_mean/min/max/q10/q50/q90``, ``xi_k``,
        ``nan_samples`` (keys present where they apply).
    :param host: the training host.
    """


# -------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------
@hookspec
def amat_add_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``amat`` subcommands (converters, trainer front ends).

    :param subparsers: ``amat``'s subparsers; each parser must
        ``set_defaults(func=callable(args) -> int)``.
    """


@hookspec
def amat_tasks() -> "Sequence[Task]":
    """Return the :class:`~amat_hooks.tasks.Task` objects this plugin contributes to
    ``amat calibrate``, ``amat eval`` and ``amat grid`` (``amat eval NAME ...``). Results of
    all plugins are merged; a later plugin's task replaces one of the same name.
    """


@hookspec
def amat_demo_backends() -> "dict[str, Any]":
    """Return ``{name: (description, run(args) -> int)}`` for ``amat demo --backend NAME``.
    Results of all plugins are merged; the core supplies ``loop``."""
