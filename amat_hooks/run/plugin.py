"""The runner's plugin: ``amat run`` and the generic adapter answer for its batches.

* ``amat_adapter`` (``trylast``): asked after every other plugin, it answers for ``(x, y,
  ...)`` / dict batches with the script's ``torch.nn`` loss module (:class:`CriterionAdapter`);
* ``amat_add_commands`` (``tryfirst``): the ``run`` parser exists before other plugins'
  ``amat_add_commands`` run, so adapters can add their own ``amat run`` flags to it
  (``subparsers.choices["run"]``) and read them from ``host.options``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from amat_hooks.adapter import BatchAdapter, is_generic_batch
from amat_hooks.atomic_files import writable_folder_problem
from amat_hooks.hookspecs import hookimpl
from amat_hooks.run.adapter import CriterionAdapter, RunnerError
from amat_hooks.run.host import Runner
from amat_hooks.run.resume import SIDECAR_SUFFIX, STATE_NAME
from amat_hooks.run.launcher import EXIT_USAGE, run_script
from amat_hooks.run.split import BATCH_MODES


@hookimpl(trylast=True)
def amat_adapter(batch: Any, host: Any) -> BatchAdapter | None:
    if isinstance(host, Runner) and is_generic_batch(batch):
        return CriterionAdapter(host.criterion)
    return None


@hookimpl(tryfirst=True)
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from amat_hooks.config import AdvConfig

    p = subparsers.add_parser(
        "run", help="run an unmodified training script with STD/SAT/AMAT (monkeypatch runner)",
        description="Run an unmodified PyTorch training script with adversarial training added from "
                    "outside: the runner patches DataLoader (sample ids, clean + noisy rows), finds the "
                    "model from the optimizer, runs the clean and the noisy rows as two forward passes "
                    "and lets the adapters describe batch and loss (docs/runner.md).",
        epilog="example: amat run --adv amat --adv-step 1 --adv-xi-rule mean+2std "
               "-- python -m amat_hooks.examples.landmark_train --data DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    AdvConfig.add_arguments(p)
    g = p.add_argument_group("amat run")
    g.add_argument("--adv-batch", choices=BATCH_MODES, default="split",
                   help="split (default): the clean and the noisy rows go through the model as two forward "
                        "passes, as Algorithm 1 runs them (BatchNorm statistics of each alone); joint: one "
                        "forward of 2B rows (BatchNorm normalises with statistics over clean and noisy rows "
                        "together, and its running statistics take one update from the mix)")
    g.add_argument("--adv-resume", metavar="STATE", help=f"resume margins/xi/epoch counter from a {STATE_NAME} "
                                                         f"or *{SIDECAR_SUFFIX} of an earlier run (the weights "
                                                         f"are the script's to load; checked at the first step)")
    g.add_argument("--adv-out", metavar="DIR", help=f"where {STATE_NAME} goes if the script saves no "
                                                    f"checkpoint (default: current directory)")
    p.add_argument("script_command", nargs=argparse.REMAINDER, metavar="command",
                   help="-- python SCRIPT.py [script arguments]")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """``amat run``: settings, resume, then the script."""
    from amat_hooks.config import AdvConfig, AdvConfigError, force_resume_requested

    try:
        cfg = AdvConfig.from_args(args)
        if args.adv_out and (problem := writable_folder_problem(args.adv_out)):
            raise RunnerError(f"--adv-out: {problem}; give a folder amat run can write {STATE_NAME} into")
        runner = Runner(cfg, options=args, out_dir=args.adv_out, batch_mode=args.adv_batch)
        if args.adv_resume:
            runner.load_state(args.adv_resume, force=args.adv_force_resume or force_resume_requested())
    except (AdvConfigError, RunnerError) as e:
        print(f"amat run: {e}", file=sys.stderr)
        return EXIT_USAGE
    runner.amat_log(f"mode {cfg.label}: {cfg.to_json()}")
    return run_script(runner, args.script_command)
