"""``amat grid <task>`` (paper section 3.8, Appendix A): train AMAT once per Delta with a
fixed budget, each in its own subprocess with its own log, evaluate every model on the
validation split under PGD and pick the Delta with the best AUC_robust. Finished grid
points (``grid.json``) are neither retrained nor re-evaluated. Written once for every task."""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from amat_hooks.atomic_files import atomic_write_json, atomic_write_text, read_json
from amat_hooks.evaluation import EvalResult, EvalTask, check_levels, robustness_eval
from amat_hooks.tasks import Task, TrainRun
from amat_hooks.cli.options import checked_levels, parse_deltas


def run_grid_command(task: Task, args: argparse.Namespace) -> int:
    deltas = parse_deltas(args.deltas)
    checked_levels(args.levels)
    task.check(args, "grid")

    def train(delta: float, folder: Path) -> Path:
        return run_training(task.train_run(delta, folder, args), folder, f"Delta={delta:g}")

    results = run_grid(deltas, train, lambda artefact: task.grid_eval_task(artefact, args), args)
    first = next(iter(results.values()))
    for metric in task.report_metrics:  # the same grid under the task's other metrics
        if metric != first.metric and metric in first.clean:
            table = grid_table({d: replace(r, metric=metric) for d, r in results.items()})
            path = atomic_write_text(Path(args.out) / f"grid_{metric}.md", table + "\n")
            print(f"\n{table}\n(written: {path})")
    return 0


def run_training(run: TrainRun, folder: Path, what: str) -> Path:
    """Run one training process with its output in ``folder/train.log``; return its artefact."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    env = {**os.environ, **{k: str(v) for k, v in run.env.items()}}
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(run.cmd) + "\n")
        f.flush()
        p = subprocess.run(run.cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    artefact = run.artefact() if run.artefact is not None else None
    if p.returncode != 0 or artefact is None:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise RuntimeError(f"training for {what} failed (exit {p.returncode})"
                           + ("" if p.returncode else " and left no model") + f"; log {log}:\n{tail}")
    return Path(artefact)


def run_grid(deltas: Sequence[float], train: Callable[[float, Path], Path],
             task_for: Callable[[Path], EvalTask], args: argparse.Namespace) -> dict[float, EvalResult]:
    """Train (``train(delta, folder) -> artefact``) and evaluate each Delta; print and write
    the Appendix-A table (``grid.md``) and the state (``grid.json``)."""
    out = Path(args.out)
    state_file = out / "grid.json"
    state = read_json(state_file) if state_file.exists() else {}
    results: dict[float, EvalResult] = {}
    levels = check_levels(args.levels)
    for d in sorted(float(v) for v in deltas):
        key = f"{d:g}"
        rec = state.get(key, {})
        if rec.get("result") and rec["result"]["levels"] == levels and \
                (rec["result"].get("protocol") or {}).get("protocol", "paper") == getattr(args, "protocol", "paper"):
            print(f"Delta={key}: done earlier ({rec['artefact']})")
            results[d] = EvalResult.from_dict(rec["result"])
            continue
        t0 = time.perf_counter()
        artefact = Path(rec["artefact"]) if rec.get("artefact") and Path(rec["artefact"]).exists() else None
        if artefact is None:
            print(f"Delta={key}: training", flush=True)
            artefact = train(d, out / f"delta_{key}")
            state[key] = {"artefact": str(artefact), "train_seconds": time.perf_counter() - t0}
            atomic_write_json(state_file, state)
        print(f"Delta={key}: evaluating on the validation split", flush=True)
        r = robustness_eval(task_for(artefact), levels, attacks=("pgd",), pgd_steps=args.pgd_steps,
                            progress=not args.no_progress, seed=args.seed,
                            protocol=getattr(args, "protocol", "paper"))
        state[key]["result"] = r.to_dict()
        atomic_write_json(state_file, state)
        results[d] = r
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
