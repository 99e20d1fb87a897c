"""``amat eval <task>``: every model of ``--models`` clean and under attack at every level
(``--attacks``: the training loss, SegPGD, CosPGD, masked CE, the per-sample worst case;
``--radius``: each sample's robust radius), cached per model (``--resume``), one
side-by-side report with the gradient-masking check, a margin histogram per AMAT model and
the source of its xi in the report header. Written once for every task."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Mapping, Sequence

from amat_hooks.evaluation import (EvalResult, EvalTask, RadiusSpec, check_levels, fingerprint, load_result,
                          robustness_eval, save_result)
from amat_hooks.evaluation.figures import plot_margin_histogram
from amat_hooks.evaluation.report import masking_lines, radius_markdown, to_markdown, write_report
from amat_hooks.state import read_adversarial_state
from amat_hooks.tasks import Task, TaskError
from amat_hooks.cli.options import checked_levels, parse_attacks, parse_model_specs


def run_eval(task: Task, args: argparse.Namespace) -> int:
    """The whole command: parse and check ``--models``, evaluate, report."""
    checked_levels(args.levels)
    attacks = parse_attacks(args.attacks)
    from amat_hooks.evaluation.run import known_attacks

    known = known_attacks(task.aimed_attacks)
    unknown = [a for a in attacks if a not in known]
    if unknown:  # before any model loads (what a task supports: once its model is built)
        raise TaskError(f"--attacks: unknown attack {unknown[0]!r} for amat eval {task.name}; choose from "
                        f"{', '.join(known)}")
    if "worst" in attacks and len(attacks) < 2:
        raise TaskError("--attacks worst is the per-sample worst case over the other attacks listed: list at "
                        "least one more (e.g. --attacks pgd,ifgsm,worst)")
    task.check(args, "eval")
    models = parse_model_specs(args.models, task.default_model_name)
    for name, spec in models.items():
        task.check_model(name, spec, args)
    factories = {name: (lambda name=name, spec=spec: task.eval_task(name, spec, args))
                 for name, spec in models.items()}
    states = {name: read_adversarial_state(p) for name, spec in models.items()
              if (p := task.adversarial_state(spec, args)) is not None}
    notes = [s.describe(name) for name, s in states.items() if s is not None]
    run_evaluations(factories, args, title=task.title(args), notes=notes)
    out = Path(args.out)
    for name, state in states.items():
        if state is not None and state.margins:
            path = plot_margin_histogram(state.margins, out / f"{args.name}_{_safe(name)}_margins.png",
                                         title=f"{name} margins", delta=state.delta)
            print(f"margin histogram: {path}")
    return 0


def radius_spec(args: argparse.Namespace) -> RadiusSpec | None:
    """The radius run the arguments ask for (None without ``--radius``)."""
    if not getattr(args, "radius", False):
        return None
    thr, rel = getattr(args, "radius_threshold", (0.5, True))
    objs = tuple(o.strip().lower() for o in str(getattr(args, "radius_objective", "auto")).split(",") if o.strip())
    return RadiusSpec(objectives=objs or ("auto",), threshold=thr, relative=rel,
                      steps=int(getattr(args, "radius_steps", 100)), max_radius=getattr(args, "radius_max", None))


def run_evaluations(tasks: Mapping[str, Callable[[], EvalTask]], args: argparse.Namespace,
                    title: str = "", margins: Sequence[float] | None = None,
                    notes: Sequence[str] = ()) -> dict[str, EvalResult]:
    """Evaluate each named model (results cached per model in ``--out``), print and write
    the side-by-side report."""
    out = Path(args.out)
    levels = check_levels(args.levels)
    attacks = parse_attacks(args.attacks)
    radius = radius_spec(args)
    results: dict[str, EvalResult] = {}
    for name, make in tasks.items():
        done = out / "models" / f"{_safe(name)}.json"
        state = out / "models" / f"{_safe(name)}.partial.jsonl"
        task = make()
        try:  # a segmentation objective on a detection task, worst alone ...: the user's to fix
            fp = fingerprint(task, levels, attacks, args.pgd_steps, args.ifgsm_steps, args.seed, radius,
                             getattr(args, "protocol", "paper"))
        except ValueError as e:
            raise TaskError(str(e)) from None
        if args.resume and done.exists():
            r = load_result(done)
            if r.fingerprint == fp:
                print(f"{name}: already evaluated ({done})")
                results[name] = r
                continue
            print(f"{name}: {done} was evaluated differently; evaluating again")
        what = ", ".join(attacks) + (" + radius" if radius is not None else "")
        print(f"{name}: evaluating at levels {levels} ({what.lstrip(', ')})", flush=True)
        r = robustness_eval(task, levels, attacks=attacks, pgd_steps=args.pgd_steps,
                            ifgsm_steps=args.ifgsm_steps, state_path=state, resume=args.resume,
                            progress=not args.no_progress, seed=args.seed, radius=radius,
                            protocol=getattr(args, "protocol", "paper"))
        save_result(r, done)
        state.unlink(missing_ok=True)
        results[name] = r
    paths = write_report(results, out, name=args.name, title=title, margins=margins, notes=notes)
    print()
    print(to_markdown(results))
    rad = radius_markdown(results)
    if rad:
        print("\n" + rad)
    checks = masking_lines(results)
    if checks:
        print("\ngradient-masking check (largest level):")
        for line in checks:
            print("  " + line)
    for line in notes:
        print(line)
    print("\nwritten: " + ", ".join(str(p) for p in paths.values()))
    return results


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
