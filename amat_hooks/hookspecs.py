"""Hook specifications of amat-hooks, grouped by phase (modelled on pytest's hookspec.py).

An adapter (a plugin) describes ONE kind of trainer batch: where the input is, which
sample ids it carries, how to put a perturbed input back and how to get per-sample loss
terms. ``host`` is whatever drives training (an nnU-Net trainer, an Ultralytics trainer,
the generic loop, the runner) so an adapter can recognise its own batches. An adapter
returns ``None`` from a ``firstresult`` hook when a batch is not its kind; the next
plugin is asked. Plugins registered later (entry points) are asked first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Sequence

import pluggy

if TYPE_CHECKING:
    import argparse

    from torch import Tensor, nn

    from .margins import MarginStore
    from .policies import BoundLoss, StepOutput

PROJECT = "amat_hooks"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------------------
# Batch anatomy: what the adapter knows about its trainer's batches.
# -------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def amat_batch_inputs(batch: Any, host: Any) -> "Tensor | None":
    """Return the input tensor ``[B, ...]`` of ``batch`` that the attack perturbs.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_batch_sample_ids(batch: Any, host: Any) -> "Sequence[Hashable] | None":
    """Return one hashable id per sample of ``batch`` (file name, case + slice, index).

    AMAT keys its margins by these ids, so they must be stable across epochs.
    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_batch_with_inputs(batch: Any, inputs: "Tensor", host: Any) -> Any:
    """Return a batch like ``batch`` whose input is ``inputs`` (possibly with more rows:
    the runner feeds clean + noisy samples as one batch, targets repeated).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_bind_loss(batch: Any, model: "nn.Module", host: Any) -> "BoundLoss | None":
    """Return a :class:`~amat_hooks.policies.BoundLoss` for ``batch``: per-sample loss
    terms ``[B, K]`` as a function of the input, using the trainer's OWN loss objects,
    and optionally the trainer's scalar loss from the same forward pass.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def amat_loss_term_names(host: Any) -> "Sequence[str] | None":
    """Return names for the K loss terms (e.g. ``["box", "cls", "dfl"]``) for logs."""


# -------------------------------------------------------------------------------------
# Observers: all implementations are called; return values are ignored.
# -------------------------------------------------------------------------------------
@hookspec
def amat_after_step(output: "StepOutput", ids: "Sequence[Hashable] | None", host: Any) -> None:
    """Called after every adversarial training step with the policy's output
    (clean/noisy loss terms, attack result, per-sample eps, accepted flags)."""


@hookspec
def amat_margins_updated(store: "MarginStore", ids: "Sequence[Hashable]", host: Any) -> None:
    """Called after AMAT changed the margins of ``ids`` (after cross-rank sync at epoch end
    ``ids`` is empty)."""


@hookspec
def amat_epoch_end(epoch: int, summary: "dict[str, float]", host: Any) -> None:
    """Called once per epoch with the policy summary (margin mean/min/max, xi, NaN count)."""


@hookspec
def amat_threshold_set(xi: "Tensor", source: str, host: Any) -> None:
    """Called when xi is fixed from a calibration file (``source`` names it)."""


# -------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------
@hookspec
def amat_add_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``amat`` subcommands. Each parser must ``set_defaults(func=callable(args) -> int)``."""


@hookspec
def amat_demo_backends() -> "dict[str, Any]":
    """Return ``{name: (description, run(args) -> int)}`` for ``amat demo --backend NAME``.
    Results of all plugins are merged; the core supplies ``loop``."""


@hookspec
def amat_add_task_commands(command: str, subparsers: "argparse._SubParsersAction") -> None:
    """Add a task target under a shared command: ``command`` is ``"calibrate"``, ``"eval"``
    or ``"grid"``; add e.g. ``nnunet``/``yolo``/``landmark`` parsers to ``subparsers``
    (so users type ``amat calibrate nnunet ...``). Same ``set_defaults(func=...)`` rule."""
