"""Running the script: ``python SCRIPT.py args`` / ``python -m module args`` in this
process (``runpy``, as ``__main__``), under the patches, with its exit code."""
from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from amat_hooks.run.host import Runner
from amat_hooks.run.resume import STATE_NAME
from amat_hooks.run.adapter import RunnerError
from amat_hooks.run.patches import Patches

EXIT_USAGE = 2
EXIT_REFUSED = 3


def parse_command(command: Sequence[str]) -> tuple[str, str, list[str]]:
    """``python SCRIPT.py args`` / ``python -m module args`` / ``SCRIPT.py args`` ->
    (kind "path"|"module", target, args)."""
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RunnerError("no script given; usage: amat run [--adv ...] -- python SCRIPT.py [script args]")
    if Path(cmd[0]).name.startswith("python") and not cmd[0].endswith(".py"):
        cmd = cmd[1:]
        if not cmd:
            raise RunnerError("no script after 'python'; usage: amat run -- python SCRIPT.py [args]")
        if cmd[0] == "-m":
            if len(cmd) < 2:
                raise RunnerError("'python -m' needs a module name")
            return "module", cmd[1], cmd[2:]
        if cmd[0].startswith("-"):
            raise RunnerError(f"interpreter option {cmd[0]!r} is not supported by amat run; "
                              f"use: amat run -- python SCRIPT.py [args]")
    return "path", cmd[0], cmd[1:]


def run_script(runner: Runner, command: Sequence[str]) -> int:
    """Run the script under the patches; returns its exit code (tracebacks printed).

    A refused run (exit 3) leaves no ``amat_state.json`` behind; any other end writes the
    state reached (``--adv-out``, the checkpoint folder, or the working directory)."""
    try:
        kind, target, script_args = parse_command(command)
    except RunnerError as e:
        print(f"amat run: {e}", file=sys.stderr)
        return EXIT_USAGE
    if kind == "path" and not Path(target).is_file():
        print(f"amat run: script not found: {target} (working directory {os.getcwd()})", file=sys.stderr)
        return EXIT_USAGE
    runner.script = target
    runner.clean_stale_temps(Path(runner.out_dir or Path.cwd()))
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    before = set(sys.modules)
    code: int = 0
    patches = Patches(runner)
    t0 = time.perf_counter()

    def on_sigint(signum, frame):  # marked before the KeyboardInterrupt unwinds the script's loops
        runner.interrupted = True
        raise KeyboardInterrupt

    old_sigint = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        patches.install()
        sys.argv = [target, *script_args]
        if kind == "path":
            sys.path.insert(0, str(Path(target).resolve().parent))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.path.insert(0, os.getcwd())
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = _exit_code(e.code)
    except RunnerError as e:
        runner.refused = str(e)
        print(f"amat run: refused: {e}", file=sys.stderr)
        code = EXIT_REFUSED
    except KeyboardInterrupt:
        runner.interrupted = True
        code = 130
    except BaseException:  # the script crashed: its traceback, its failure
        traceback.print_exc()
        print(f"amat run: the script {target} failed (exit code 1)", file=sys.stderr)
        code = 1
    finally:
        patches.remove()
        if old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)
        sys.argv, sys.path[:] = saved_argv, saved_path
        script_dir = str(Path(target).resolve().parent) if kind == "path" else None
        for name in set(sys.modules) - before:  # the script's own modules (network, data_loader)
            f = getattr(sys.modules.get(name), "__file__", None) or ""
            if script_dir and f.startswith(script_dir + os.sep):
                del sys.modules[name]
    if runner.refused:  # no state from a refused run
        if code != EXIT_REFUSED:  # the script caught the refusal itself
            print(f"amat run: refused: {runner.refused}", file=sys.stderr)
        return EXIT_REFUSED
    if runner.interrupted:  # the partial pass is no epoch: the state on disk stays the last finished one's
        last = runner.last_state_path
        print(f"amat run: interrupted (Ctrl-C) in epoch {runner.epoch}; the partial pass is not counted; "
              + (f"the state of the last finished save is {last} (epoch {runner.saved_epochs}"
                 + (f", with {runner.last_checkpoint})" if runner.last_checkpoint else ")")
                 + f"; continue with --adv-resume {last}" if last else "no state was written (no epoch finished)"),
              file=sys.stderr)
        return code
    if code == 0 and runner.policy.name != "none" and runner.batches_seen == 0 and runner.steps == 0:
        print("amat run: warning: the script finished without a single training step from a DataLoader; "
              "nothing was trained", file=sys.stderr)
    try:
        if runner._pass_done and not runner.interrupted:
            runner.end_of_pass()  # the last pass of a loader that keeps one iterator (classic YOLOv5)
        runner.flush(final=True)  # batches trained after the last step (gradient accumulation)
    except RunnerError as e:
        print(f"amat run: refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if runner.batches_seen or runner.steps or runner.resumed_from:
        where = runner.checkpoint_dir or runner.out_dir or Path.cwd()
        path = runner.write_state(Path(where) / STATE_NAME)
        runner.amat_log(f"run: {runner.describe()}; state written to {path} ({time.perf_counter() - t0:.0f} s)")
    return code


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
