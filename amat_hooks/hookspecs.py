"""Hook specifications of amat-hooks, grouped by phase (modelled on pytest's hookspec.py).

Five hooks, all prefixed ``amat_``. A trainer's batch anatomy is not a hook question per
batch: it is one :class:`~amat_hooks.adapter.BatchAdapter` object. Hosts that know their
trainer (the nnU-Net and Ultralytics trainers) build it themselves; generic hosts (the
plain-loop :class:`~amat_hooks.loop.AdversarialLoop`, the ``amat run`` runner) ask
:func:`amat_adapter` once, with their first training batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import pluggy

if TYPE_CHECKING:
    import argparse

    from amat_hooks.adapter import BatchAdapter
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
# Batch anatomy: asked once per run by generic hosts.
# -------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def amat_adapter(batch: Any, host: Any) -> "BatchAdapter | None":
    """Return the :class:`~amat_hooks.adapter.BatchAdapter` for batches like ``batch``, or
    None if they are not your kind.

    :param batch: the first training batch, as the trainer's DataLoader yields it (under
        ``amat run``: without the ids the runner adds).
    :param host: the generic host asking: an :class:`~amat_hooks.loop.AdversarialLoop`
        (``host.loss_fn``: the user's per-sample loss) or the ``amat run``
        :class:`~amat_hooks.run.Runner` (``host.options``: the parsed ``amat run`` flags,
        ``host.loss_modules``: the ``torch.nn`` loss modules the script created).

    Asked once per run; the adapter then serves every batch. Stops at the first non-None
    result; plugins registered later (entry points) are asked first, and the generic
    ``(x, y[, ids])`` answers of the loop and the runner are ``trylast``.
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
# Command line and tasks: results of all plugins are merged.
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
    ``amat calibrate``, ``amat eval`` and ``amat grid`` (``amat eval NAME ...``). A later
    plugin's task replaces one of the same name.
    """


@hookspec
def amat_demo_backends() -> "dict[str, Any]":
    """Return ``{name: (description, run(args) -> int)}`` for ``amat demo --backend NAME``."""
