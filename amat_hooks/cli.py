"""``amat``: one console script; subcommands come from plugins (``amat_add_commands``)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import __version__
from .offline import apply_offline_env


#: Commands shared by every task; integrations add ``nnunet``/``yolo``/``landmark`` under them.
SHARED_COMMANDS = {
    "calibrate": "compute the thresholds xi from a clean (STD) model's per-sample losses",
    "eval": "evaluate models under 100-step PGD / 10-step IFGSM at several L2 noise levels",
    "grid": "choose AMAT's step size Delta by a grid search on the validation split",
}


def build_parser(pm=None) -> argparse.ArgumentParser:
    from .plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    parser = argparse.ArgumentParser(
        prog="amat", description="Adaptive-margin adversarial training (AMAT) for existing trainers.")
    parser.add_argument("--version", action="version", version=f"amat-hooks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pm.hook.amat_add_commands(subparsers=sub)
    for command, text in SHARED_COMMANDS.items():
        p = sub.add_parser(command, help=text, description=text)
        tasks = p.add_subparsers(dest="task", metavar="TASK")
        p.set_defaults(func=lambda args, p=p: (p.print_help(), 2)[1])
        pm.hook.amat_add_task_commands(command=command, subparsers=tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_env()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        # Bad input and missing artefacts: one clear line, not a traceback.
        if os.environ.get("AMAT_DEBUG"):
            raise
        print(f"amat {args.command}: error: {e}\n(set AMAT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
