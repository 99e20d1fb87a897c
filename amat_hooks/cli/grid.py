"""``amat grid <task>`` (paper section 3.8, Appendix A): train AMAT once per Delta with a
fixed budget, each in its own subprocess with its own log, evaluate every model on the
validation split under PGD and pick the Delta with the best AUC_robust. Finished grid
points (``grid.json``) are neither retrained nor re-evaluated. Written once for every task.

While a Delta trains, its log is followed: every epoch line (:data:`EPOCH_LINE`: ``[amat]
epoch N`` of ``amat run`` and the plain loop, ``AMAT epoch N`` of Ultralytics, nnU-Net's
``Epoch N``, a script's own ``Epoch N ...``) is printed as ``Delta=D | <line>``; on a terminal
a status line on stderr shows the elapsed time and the log's last line, elsewhere a line
every ``heartbeat`` seconds says the training is still running. ``--no-progress`` keeps only
the start and finish line of each Delta."""
from __future__ import annotations

import argparse
import codecs
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from amat_hooks.atomic_files import atomic_write_json, atomic_write_text, read_json
from amat_hooks.evaluation import EvalResult, EvalTask, check_levels, robustness_eval
from amat_hooks.evaluation.progress import status_bar, write_line
from amat_hooks.tasks import Task, TrainRun
from amat_hooks.cli.options import checked_levels, parse_deltas


def run_grid_command(task: Task, args: argparse.Namespace) -> int:
    deltas = parse_deltas(args.deltas)
    checked_levels(args.levels)
    task.check(args, "grid")

    def train(delta: float, folder: Path) -> Path:
        return run_training(task.train_run(delta, folder, args), folder, f"Delta={delta:g}",
                            show=not args.no_progress)

    results = run_grid(deltas, train, lambda artefact: task.grid_eval_task(artefact, args), args)
    first = next(iter(results.values()))
    for metric in task.report_metrics:  # the same grid under the task's other metrics
        if metric != first.metric and metric in first.clean:
            table = grid_table({d: replace(r, metric=metric) for d, r in results.items()})
            path = atomic_write_text(Path(args.out) / f"grid_{metric}.md", table + "\n")
            print(f"\n{table}\n(written: {path})")
    return 0


#: the epoch lines a training log gets from each host (see the module docstring)
EPOCH_LINE = re.compile(r"\[amat\] epoch \d+|\bAMAT epoch \d+|(?:^|: )Epoch \d+\b")


def run_training(run: TrainRun, folder: Path, what: str, show: bool = True, poll: float = 1.0,
                 heartbeat: float = 300.0) -> Path:
    """Run one training process with its output in ``folder/train.log``, following the log
    (:func:`follow_log`) unless ``show`` is False; return its artefact."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    env = {**os.environ, **{k: str(v) for k, v in run.env.items()}}
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(run.cmd) + "\n")
        f.flush()
        p = subprocess.Popen(run.cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = follow_log(p, log, what, show=show, poll=poll, heartbeat=heartbeat)
        except BaseException:  # Ctrl-C: no orphaned training
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            raise
    artefact = run.artefact() if run.artefact is not None else None
    if returncode != 0 or artefact is None:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise RuntimeError(f"training for {what} failed (exit {returncode})"
                           + ("" if returncode else " and left no model") + f"; log {log}:\n{tail}")
    return Path(artefact)


def follow_log(process: subprocess.Popen, log: Path, what: str, show: bool = True, poll: float = 1.0,
               heartbeat: float = 300.0) -> int:
    """Wait for ``process`` while reading what it appends to ``log``: each :data:`EPOCH_LINE`
    line is printed (``what | line``), a terminal gets a status line (elapsed, the last log
    line), a pipe or file a line every ``heartbeat`` seconds. Returns the exit code."""
    if not show:
        return process.wait()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    t0 = last_said = time.monotonic()
    bar = status_bar(f"{what} training")
    pending, last = "", ""
    try:
        with open(log, "rb") as f:
            while True:
                code = process.poll()
                pending += decoder.decode(f.read(), final=code is not None)
                *lines, pending = re.split(r"[\r\n]", pending)  # tqdm redraws end in \r
                if code is not None and pending:
                    lines, pending = lines + [pending], ""
                for line in (ln.strip() for ln in lines):
                    if not line:
                        continue
                    last = line
                    if EPOCH_LINE.search(line):
                        write_line(f"{what} | {line}")
                        last_said = time.monotonic()
                now = time.monotonic()
                if bar is not None:
                    width = max(shutil.get_terminal_size((100, 20)).columns - len(what) - 25, 20)
                    bar.set_postfix_str(last[:width], refresh=True)
                elif now - last_said >= heartbeat:
                    write_line(f"{what}: still training ({now - t0:.0f} s; log {log})")
                    last_said = now
                if code is not None:
                    return code
                time.sleep(poll)
    finally:
        if bar is not None:
            bar.close()


def run_grid(deltas: Sequence[float], train: Callable[[float, Path], Path],
             task_for: Callable[[Path], EvalTask], args: argparse.Namespace) -> dict[float, EvalResult]:
    """Train (``train(delta, folder) -> artefact``) and evaluate each Delta; print and write
    the Appendix-A table (``grid.md``) and the state (``grid.json``)."""
    out = Path(args.out)
    state_file = out / "grid.json"
    state = read_json(state_file) if state_file.exists() else {}
    results: dict[float, EvalResult] = {}
    levels = check_levels(args.levels)
    order = sorted(float(v) for v in deltas)
    for i, d in enumerate(order, 1):
        key = f"{d:g}"
        rec = state.get(key, {})
        if rec.get("result") and rec["result"]["levels"] == levels and \
                (rec["result"].get("protocol") or {}).get("protocol", "paper") == getattr(args, "protocol", "paper"):
            print(f"Delta={key}: done earlier ({rec['artefact']})")
            results[d] = EvalResult.from_dict(rec["result"])
            continue
        t0 = time.perf_counter()
        artefact = Path(rec["artefact"]) if rec.get("artefact") and Path(rec["artefact"]).exists() else None
        where = f"Delta={key} ({i}/{len(order)})"
        if artefact is None:
            print(f"{where}: training (log {out / f'delta_{key}' / 'train.log'})", flush=True)
            artefact = train(d, out / f"delta_{key}")
            state[key] = {"artefact": str(artefact), "train_seconds": time.perf_counter() - t0}
            atomic_write_json(state_file, state)
            print(f"{where}: trained in {state[key]['train_seconds']:.0f} s ({artefact})", flush=True)
        t1 = time.perf_counter()
        print(f"{where}: evaluating on the validation split", flush=True)
        r = robustness_eval(task_for(artefact), levels, attacks=("pgd",), pgd_steps=args.pgd_steps,
                            progress=not args.no_progress, seed=args.seed,
                            protocol=getattr(args, "protocol", "paper"))
        state[key]["result"] = r.to_dict()
        atomic_write_json(state_file, state)
        results[d] = r
        print(f"{where}: done, AUC_robust {r.auc_robust('pgd'):.4f} under PGD "
              f"(evaluated in {time.perf_counter() - t1:.0f} s)", flush=True)
    table = grid_table(results)
    atomic_write_text(out / "grid.md", table + "\n")
    print("\n" + table)
    return results


def best_delta(results: Mapping[float, EvalResult]) -> float:
    """The grid's choice (paper 3.8): the Delta with the best AUC_robust under PGD."""
    aucs = {d: r.auc_robust("pgd") for d, r in results.items()}
    return (max if next(iter(results.values())).higher_is_better else min)(aucs, key=aucs.get)


def grid_table(results: Mapping[float, EvalResult]) -> str:
    """Appendix-A table: metric at level 0 (clean) and each level under PGD, AUC_robust."""
    first = next(iter(results.values()))
    m = first.metric
    head = ["Delta", "0"] + [f"{lv:g}" for lv in first.levels] + ["AUC_robust"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    aucs = {d: r.auc_robust("pgd") for d, r in results.items()}
    best = best_delta(results)
    for d, r in results.items():
        cells = [f"{d:g}", f"{r.clean[m]:.4f}"] + [f"{v:.4f}" for v in r.curve("pgd")] + [
            (f"**{aucs[d]:.4f}**" if d == best else f"{aucs[d]:.4f}")]
        lines.append("| " + " | ".join(cells) + " |")
    steps = first.steps.get("pgd", 100)
    return "\n".join(lines) + f"\n\n{m} on the validation split under {steps}-step PGD; best Delta = {best:g}."
