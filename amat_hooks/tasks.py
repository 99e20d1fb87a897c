"""The task interface: what ``amat calibrate``, ``amat eval`` and ``amat grid`` need to
know about one kind of trainer, so that the three commands are written once.

An adapter (:class:`~amat_hooks.adapter.BatchAdapter`) says what a trainer's batch and loss
look like. A :class:`Task` says how to load a model of that kind, feed it evaluation or
calibration batches (an :class:`~amat_hooks.evaluation.EvalTask` holding that adapter) and
score it, and how to train one AMAT model for the grid. Plugins contribute tasks through the ``amat_tasks`` hook; the commands in
:mod:`amat_hooks.cli` do the rest (model-spec and ``--deltas`` parsing, one subprocess per
Delta, the xi file, the report, margin histograms, errors).
"""
from __future__ import annotations

import argparse
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from amat_hooks.evaluation import EvalTask

COMMANDS = ("calibrate", "eval", "grid")


class TaskError(ValueError):
    """Bad input to a task command (a missing model, data, split or option). The CLI prints
    the message as one line, ``amat <command> <task>: error: ...``, and exits with 2."""


@dataclass
class CalibrationSet:
    """What ``amat calibrate`` scores: the clean model on the training split, as an
    :class:`~amat_hooks.evaluation.EvalTask` whose adapter states the training loss (its
    per-sample terms are what AMAT compares with xi).

    ``identity`` names what the xi belongs to (dataset, configuration, data file ...), checked
    when a trainer reads it; ``source`` says which model and data produced the terms
    (recorded, never checked); ``default_path``: where the xi file goes without ``--out``.
    """

    task: EvalTask
    identity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    default_path: Path | None = None


@dataclass
class TrainRun:
    """One training process of the grid: ``cmd`` run with ``env`` added to the environment,
    its output in ``folder/train.log``; ``artefact()`` then returns what :meth:`Task.eval_task`
    loads (a checkpoint or a results folder), or None if the run produced nothing."""

    cmd: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    artefact: Any = None  # Callable[[], Path | None]


class Task(ABC):
    """One kind of trained model, for the shared commands. Subclasses set the class
    attributes and implement the methods of the commands they support (a task that has no
    grid leaves :meth:`train_run` unimplemented and ``commands`` without ``"grid"``)."""

    #: ``amat <command> NAME``
    name: str = "task"
    #: one line for ``amat eval --help``
    help: str = ""
    #: commands this task supports
    commands: tuple[str, ...] = COMMANDS
    #: ``--levels`` default: a preset of :data:`amat_hooks.cli.options.PAPER_LEVELS` or numbers
    default_levels: str = "1,2,4"
    #: the xi rule the paper uses for this task (section 2.2 / 3.5-3.7)
    xi_rule: str = "mean"
    #: what a ``--models`` entry names (shown in help texts), e.g. "CHECKPOINT"
    model_spec_help: str = "PATH"
    #: default ``--models`` for ``amat eval`` (None: required)
    default_models: str | None = None
    #: ``--attacks`` names aimed at the task's metric (its EvalTask's ``objectives()``), known
    #: here so that a misspelt one is refused before any model loads
    aimed_attacks: tuple[str, ...] = ()
    #: other metrics the grid also tabulates (``grid_<metric>.md``)
    report_metrics: tuple[str, ...] = ()
    #: whether the command line may carry words argparse does not know (``key=value``
    #: arguments of Ultralytics, a training command after ``--``); they reach the task as
    #: ``args.extra``
    accepts_extra: bool = False

    # -- arguments -----------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        """Add this task's own arguments to ``amat <command> NAME``."""

    def check(self, args: argparse.Namespace, command: str) -> None:
        """Validate arguments before anything heavy runs; raise :class:`TaskError`."""

    # -- eval -------------------------------------------------------------------------------
    def default_model_name(self, spec: str) -> str:
        """Name of a ``--models`` entry given without ``NAME=``."""
        p = Path(spec)
        return p.parent.name if p.suffix else (p.name or spec)

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        """Refuse a ``--models`` entry before any evaluation starts (e.g. a missing file)."""

    @abstractmethod
    def eval_task(self, name: str, spec: str, args: argparse.Namespace) -> EvalTask:
        """The loaded model ``spec`` wrapped for :func:`~amat_hooks.evaluation.robustness_eval`
        on the split the arguments name."""

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        """The file that holds the model's adversarial state (a ``*.amat.json`` sidecar, or a
        checkpoint with an ``amat_hooks`` entry), for margins and the xi source in the report."""
        return None

    def title(self, args: argparse.Namespace) -> str:
        """The report title."""
        return self.name

    # -- calibrate -----------------------------------------------------------------------------
    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        """The clean model on the training split (see :class:`CalibrationSet`)."""
        raise TaskError(f"amat calibrate {self.name} is not supported")

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        """One line: how a training run uses this xi file."""
        return f"train with --adv-xi-file {path} (or --adv-xi {','.join(f'{v:.6g}' for v in xi)})"

    # -- grid -----------------------------------------------------------------------------------
    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        """The command that trains one AMAT model with step ``delta`` into ``folder``."""
        raise TaskError(f"amat grid {self.name} is not supported")

    def grid_eval_task(self, artefact: Path, args: argparse.Namespace) -> EvalTask:
        """The grid's model (what :attr:`TrainRun.artefact` returned) on the validation split."""
        return self.eval_task("AMAT", str(artefact), args)


def amat_executable() -> list[str]:
    """The ``amat`` console script of this environment (else ``python -m amat_hooks.cli``),
    for tasks whose grid trains through ``amat`` subcommands."""
    import sys

    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


def environment_with(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **{k: str(v) for k, v in extra.items()}}
