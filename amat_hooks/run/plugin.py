"""The runner's plugin: ``amat run`` and the hook implementations for its batches.

* :class:`~.ids.RunnerBatch` (the script's batch + loader ids) is unwrapped for the batch
  anatomy hooks, so every adapter sees the script's own batch;
* ``amat_runner_loss`` (``trylast``): the generic answer, asked after every adapter - a
  third-party adapter's ``amat_bind_loss``, else ``(x, y, ...)`` / dict batches with the
  script's ``torch.nn`` loss module;
* ``amat_add_commands`` (``tryfirst``): the ``run`` parser exists before other plugins'
  ``amat_add_commands`` run, so adapters can add their own ``amat run`` flags to it
  (``subparsers.choices["run"]``) and read them from ``host.options``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Hashable, Sequence

from torch import Tensor, nn

from amat_hooks.hookspecs import hookimpl
from amat_hooks.run.host import SIDECAR_SUFFIX, STATE_NAME, Runner
from amat_hooks.run.ids import RunnerBatch
from amat_hooks.run.launcher import EXIT_USAGE, run_script
from amat_hooks.run.loss import BoundLossScriptLoss, CriterionScriptLoss, RunnerError, ScriptLoss
from amat_hooks.run.split import BATCH_MODES


@hookimpl
def amat_batch_inputs(batch: Any, host: Any) -> Tensor | None:
    if isinstance(batch, RunnerBatch) and isinstance(host, Runner):
        return host.pm.hook.amat_batch_inputs(batch=batch.data, host=host)
    return None


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    if isinstance(batch, RunnerBatch):
        return batch.ids
    return None


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Tensor, host: Any) -> Any:
    if not (isinstance(batch, RunnerBatch) and isinstance(host, Runner)):
        return None
    inner = host.pm.hook.amat_batch_with_inputs(batch=batch.data, inputs=inputs, host=host)
    if inner is None:
        return None
    if batch.ids is None:
        return RunnerBatch(inner, None)
    k = max(1, inputs.shape[0] // max(1, len(batch.ids)))
    return RunnerBatch(inner, list(batch.ids) * k)


@hookimpl
def amat_bind_loss(batch: Any, model: nn.Module, host: Any):
    """Engine calls with a RunnerBatch: the script loss of the unwrapped batch."""
    if not (isinstance(batch, RunnerBatch) and isinstance(host, Runner)):
        return None
    if host.script_loss is None:
        host.script_loss = host.pm.hook.amat_runner_loss(batch=batch.data, host=host)
    return None if host.script_loss is None else host.script_loss.bound_loss(batch.data, model)


@hookimpl(trylast=True)
def amat_runner_loss(batch: Any, host: Any) -> ScriptLoss | None:
    from amat_hooks.integrations.torch_loop import batch_target

    if not isinstance(host, Runner):
        return None
    if host.find_model() is not None:
        bl = host.pm.hook.amat_bind_loss(batch=batch, model=host.model, host=host)
        if bl is not None:  # a third-party adapter that binds the loss itself
            return BoundLossScriptLoss(host, bl)
    if batch_target(batch) is None:
        return None
    return CriterionScriptLoss(host.criterion)


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
               "-- python examples/landmark/train.py --data DIR",
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
        runner = Runner(cfg, options=args, out_dir=args.adv_out, batch_mode=args.adv_batch)
        if args.adv_resume:
            runner.load_state(args.adv_resume, force=args.adv_force_resume or force_resume_requested())
    except (AdvConfigError, RunnerError) as e:
        print(f"amat run: {e}", file=sys.stderr)
        return EXIT_USAGE
    runner.amat_log(f"mode {cfg.label}: {cfg.to_json()}")
    return run_script(runner, args.script_command)
