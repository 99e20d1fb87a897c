"""``amat``: one console script. ``calibrate``, ``eval`` and ``grid`` are written once
(:mod:`.calibrate`, :mod:`.evaluate`, :mod:`.grid`) over the tasks plugins contribute
(``amat_tasks``); other subcommands come from plugins (``amat_add_commands``).

Every error that is the user's to fix (:class:`~amat_hooks.tasks.TaskError`, bad
settings, a wrong xi file or checkpoint) is printed as one line naming the command, and
the exit code is 2; a failed training or evaluation run prints one line and exits 1.
``AMAT_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Sequence

from amat_hooks import __version__
from amat_hooks.offline import apply_offline_env
from amat_hooks.tasks import COMMANDS, Task, TaskError
from amat_hooks.cli.options import OneLineArgumentParser, add_eval_arguments, command_parser

#: What the shared commands do, for ``amat --help``.
SHARED_COMMANDS = {
    "calibrate": "compute the thresholds xi from a clean (STD) model's per-sample losses",
    "eval": "evaluate models under L2 PGD / IFGSM at several noise levels, side by side",
    "grid": "choose AMAT's step size Delta by a grid search on the validation split",
}

#: Exceptions that mean "bad input": one line, exit 2.
def _usage_errors() -> tuple[type[BaseException], ...]:
    from amat_hooks.adapter import AdapterError
    from amat_hooks.config import AdvConfigError
    from amat_hooks.margins import MarginMismatchError
    from amat_hooks.policy_types import SemanticsMismatchError
    from amat_hooks.state import StateError, XiFileError

    return (TaskError, AdvConfigError, XiFileError, StateError, MarginMismatchError, SemanticsMismatchError,
            AdapterError, FileNotFoundError)


def tasks(pm=None) -> dict[str, Task]:
    """Every task the registered plugins contribute, by name (later plugins win)."""
    from amat_hooks.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    found: dict[str, Task] = {}
    for result in reversed(pm.hook.amat_tasks()):
        for task in result or ():
            found[task.name] = task
    return found


def build_parser(pm=None) -> argparse.ArgumentParser:
    from amat_hooks.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    parser = OneLineArgumentParser(
        prog="amat", description="Adaptive-margin adversarial training (AMAT) for existing trainers.")
    parser.add_argument("--version", action="version", version=f"amat-hooks {__version__}")
    # not "command": a subcommand's own positional of that name would overwrite it
    sub = parser.add_subparsers(dest="amat_command", metavar="COMMAND")
    pm.hook.amat_add_commands(subparsers=sub)
    known = tasks(pm)
    for command, text in SHARED_COMMANDS.items():
        p = sub.add_parser(command, help=text, description=text)
        targets = p.add_subparsers(dest="task", metavar="TASK")
        p.set_defaults(func=lambda args, p=p: (p.print_help(), 2)[1])
        for task in known.values():
            if command in task.commands:
                add_task_parser(targets, task, command)
    return parser


def add_task_parser(targets: argparse._SubParsersAction, task: Task, command: str) -> argparse.ArgumentParser:
    """``amat <command> <task.name>`` with the shared options, then the task's own."""
    from amat_hooks.cli.calibrate import run_calibrate
    from amat_hooks.cli.evaluate import run_eval
    from amat_hooks.cli.grid import run_grid_command

    what = {"calibrate": "xi from a clean (STD) model: the per-sample loss terms on the training split, "
                         "xi = mean or mean + 2 std per term (paper section 2.2); both rules are written",
            "eval": "models side by side, clean and under L2 PGD / IFGSM at every noise level",
            "grid": "train AMAT once per Delta (fixed budget, one process each) and compare the models on "
                    "the validation split under PGD (paper section 3.8, Appendix A)"}[command]
    p = targets.add_parser(task.name, help=task.help, description=f"{task.help}.\n\namat {command} {task.name}: {what}.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "calibrate":
        p.add_argument("--rule", "--xi-stat", dest="rule", default=None,
                       help=f"the statistic printed first and the file's rule: mean, mean+2std (the paper; for this "
                            f"task {task.xi_rule}), max (the authors' YOLOv5 code), huber+K (their landmark code: "
                            f"Huber location + K scales, K=3); mean, mean+2std, max and huber+3 are always written")
        p.add_argument("-o", "--out", default=None, help="xi file to write (default: the task's place for it)")
        p.add_argument("--protocol", choices=("paper", "authors"), default="paper",
                       help="authors: score as the authors' calibration scripts do (landmark: Huber + 3 scales, "
                            "train mode, batch 1, their 0.5 x Dice term; YOLO: the per-term maximum); "
                            "docs/protocols.md row 10")
        m = p.add_argument_group("initial margins (train with --adv-margin-init FILE)")
        m.add_argument("--margins-out", default=None, metavar="FILE",
                       help="also write, per training sample, the smallest L2 noise at which a loss term crosses xi "
                            "(the --rule thresholds) on this clean model: AMAT's margins can start there")
        m.add_argument("--margin-steps", type=int, default=100, help="minimal-norm attack steps (default 100)")
        m.add_argument("--margin-max", type=float, default=None,
                       help="largest radius searched (default: twice the largest default --levels); samples not "
                            "broken within it start there")
        run = run_calibrate
    elif command == "eval":
        p.add_argument("--models", default=task.default_models, required=task.default_models is None,
                       help=f"NAME={task.model_spec_help}[,NAME={task.model_spec_help}...], evaluated side by side")
        add_eval_arguments(p, task.default_levels, default_out=f"amat_out/eval_{task.name}")
        run = run_eval
    else:
        p.add_argument("--deltas", required=True, help="comma-separated AMAT step sizes, e.g. 0.5,1,2")
        add_eval_arguments(p, task.default_levels, default_out=f"amat_out/grid_{task.name}")
        run = run_grid_command
    task.add_arguments(p, command)
    p.set_defaults(func=partial(run, task), accepts_extra=task.accepts_extra)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_env()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "amat_command", None) is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    prog = " ".join(w for w in ("amat", args.amat_command, getattr(args, "task", None)) if w)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _usage_errors() as e:
        if os.environ.get("AMAT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        if os.environ.get("AMAT_DEBUG"):
            raise
        print(f"{prog}: error: {e} (AMAT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "SHARED_COMMANDS", "TaskError", "add_task_parser", "build_parser", "main", "tasks"]
