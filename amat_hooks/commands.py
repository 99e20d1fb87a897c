"""Shared plumbing of ``amat eval <task>`` and ``amat grid <task>``: the same options,
progress, resumable state and report for every task; an integration only builds
:class:`~amat_hooks.evaluation.EvalTask` objects (and, for the grid, trains one model)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .evaluation import (EvalResult, EvalTask, check_levels, fingerprint, load_result, robustness_eval,
                         save_result)
from .io import atomic_write_json, atomic_write_text, read_json
from .report import to_markdown, write_report

#: The paper's evaluation noise levels (L2) per task, section 3 / Tables 1-7.
PAPER_LEVELS = {
    "heart": (5.0, 10.0, 15.0),
    "hippocampus": (2.0, 6.0, 10.0),
    "prostate": (10.0, 20.0, 40.0),
    "landmark": (0.5, 1.0, 2.0),
    "bccd": (5.0, 10.0, 15.0),
}


def parse_levels(text: str) -> list[float]:
    if text in PAPER_LEVELS:
        return list(PAPER_LEVELS[text])
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels takes comma-separated numbers or one of {sorted(PAPER_LEVELS)}, got {text!r}") from None


def parse_model_spec(text: str) -> tuple[str, str]:
    """``NAME=PATH`` (or a bare PATH, named after its folder)."""
    if "=" in text:
        name, path = text.split("=", 1)
        return name, path
    return Path(text).name or text, text


def add_eval_arguments(p: argparse.ArgumentParser, default_levels: str) -> None:
    g = p.add_argument_group("evaluation (amat-hooks)")
    g.add_argument("--levels", type=parse_levels, default=parse_levels(default_levels),
                   help=f"L2 noise levels, comma-separated or a paper preset {sorted(PAPER_LEVELS)} "
                        f"(default {default_levels})")
    g.add_argument("--attacks", default="pgd,ifgsm", help="pgd, ifgsm or both (default)")
    g.add_argument("--pgd-steps", type=int, default=100)
    g.add_argument("--ifgsm-steps", type=int, default=10)
    g.add_argument("--out", default="amat_out/eval", help="report folder")
    g.add_argument("--name", default="robustness", help="report file stem")
    g.add_argument("--resume", action="store_true", help="continue an interrupted evaluation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")


def run_evaluations(tasks: Mapping[str, Callable[[], EvalTask]], args: argparse.Namespace,
                    title: str = "", margins: Sequence[float] | None = None) -> dict[str, EvalResult]:
    """Evaluate each named model (results cached per model in ``--out``), print and write
    the side-by-side report."""
    out = Path(args.out)
    levels = check_levels(args.levels)
    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    results: dict[str, EvalResult] = {}
    for name, make in tasks.items():
        done = out / "models" / f"{_safe(name)}.json"
        state = out / "models" / f"{_safe(name)}.partial.jsonl"
        task = make()
        if args.resume and done.exists():
            r = load_result(done)
            if r.fingerprint == fingerprint(task, levels, attacks, args.pgd_steps, args.ifgsm_steps, args.seed):
                print(f"{name}: already evaluated ({done})")
                results[name] = r
                continue
            print(f"{name}: {done} was evaluated differently; evaluating again")
        print(f"{name}: evaluating at levels {levels} ({', '.join(attacks)})", flush=True)
        r = robustness_eval(task, levels, attacks=attacks, pgd_steps=args.pgd_steps,
                            ifgsm_steps=args.ifgsm_steps, state_path=state, resume=args.resume,
                            progress=not args.no_progress, seed=args.seed)
        save_result(r, done)
        state.unlink(missing_ok=True)
        results[name] = r
    paths = write_report(results, out, name=args.name, title=title, margins=margins)
    print()
    print(to_markdown(results))
    print("\nwritten: " + ", ".join(str(p) for p in paths.values()))
    return results


def run_grid(deltas: Sequence[float], train: Callable[[float, Path], Path],
             task_for: Callable[[Path], EvalTask], args: argparse.Namespace) -> dict[float, EvalResult]:
    """Paper 3.8 / Appendix A: train AMAT per Delta (fixed budget), evaluate on the
    validation split, print the table (metric per level + AUC_robust) and the best Delta.

    ``train(delta, folder) -> artefact`` is the task's own training; finished grid points
    (recorded in ``grid.json``) are not retrained.
    """
    out = Path(args.out)
    state_file = out / "grid.json"
    state = read_json(state_file) if state_file.exists() else {}
    results: dict[float, EvalResult] = {}
    levels = check_levels(args.levels)
    for d in sorted(float(v) for v in deltas):
        key = f"{d:g}"
        rec = state.get(key, {})
        if rec.get("result") and rec["result"]["levels"] == levels:
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
                            progress=not args.no_progress, seed=args.seed)
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
