"""``amat calibrate <task>``: xi from a clean model (paper section 2.2), written once for
every task: the task gives the clean model on the training split (an EvalTask whose adapter
states the training loss), this module scores it, computes both rules, prints them, writes
the one xi file schema (:mod:`amat_hooks.state`) and says how to use it."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from amat_hooks.evaluation.progress import progress
from amat_hooks.evaluation.radius import xi_radii
from amat_hooks.evaluation.task import EvalTask
from amat_hooks.initial_margins import initial_margins_record, write_initial_margins
from amat_hooks.protocols import calibration_settings, xi_preset
from amat_hooks.state import write_xi_file, xi_record
from amat_hooks.tasks import CalibrationSet, Task, TaskError
from amat_hooks.thresholds import check_rule


def clean_terms(task: EvalTask, show: bool = True) -> torch.Tensor:
    """Per-sample training-loss terms ``[N, K]`` of the task's model on its batches, no grad
    (the model in the mode the task left it: eval, or train for augmented passes)."""
    rows = []
    with torch.no_grad():
        for batch in progress(task.batches(), total=task.size(), desc=f"calibrate {task.name}", enabled=show):
            rows.append(task.loss_terms(batch.x, batch.target, 1).detach().float().cpu())
    if not rows:
        raise TaskError("the training split is empty: nothing to calibrate from")
    return torch.cat(rows)


def check_writable(path: Path, flag: str = "--out") -> None:
    """Refuse an ``--out`` that cannot be written, before any model runs (no lost work)."""
    if path.is_dir():
        raise TaskError(f"{flag} {path} is a folder; give the file's path, e.g. {path / 'file.json'}")
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder / f".{path.name}.amat-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TaskError(f"cannot write {path} ({e.strerror}); give a writable {flag}") from None


def run_calibrate(task: Task, args: argparse.Namespace) -> int:
    task.check(args, "calibrate")
    protocol = getattr(args, "protocol", "paper")
    how = calibration_settings(protocol, task.name)
    rule = args.rule or how.get("rule") or task.xi_rule
    try:
        check_rule(rule)
    except ValueError as e:
        raise TaskError(f"--rule: {e}") from None
    if args.out:
        check_writable(Path(args.out))
    margins_out = check_margin_options(task, args)
    if how.get("batch_size") and getattr(args, "batch_size", None) not in (None, how["batch_size"]):
        print(f"note: --protocol authors scores with batch {how['batch_size']} (not --batch-size {args.batch_size}), "
              f"as the authors' script does", flush=True)
        args.batch_size = how["batch_size"]
    if protocol == "authors" and not how:
        preset = xi_preset(task.name, getattr(args, "dataset", None))
        print(f"note: the authors' {task.name} statistic is not computed here; their published thresholds are the "
              f"preset{' ' + preset if preset else 's'} (docs/protocols.md); this file holds the paper's statistics",
              flush=True)
    cal = task.calibration_set(args)
    if how.get("terms"):  # the acceptance terms of the authors' trainer (the xi they are compared with)
        cal.task.adapter.configure(SimpleNamespace(terms=how["terms"]))
        cal.identity.update(cal.task.adapter.identity())
    if how.get("model_mode") == "train":  # the authors' landmark scripts never call net.eval()
        cal.task.model.train()
    if protocol != "paper":
        cal.source["protocol"] = protocol
    names = list(cal.task.adapter.term_names)
    terms = clean_terms(cal.task, show=not getattr(args, "no_progress", False))
    record = xi_record(task.name, terms, names, rule, identity=cal.identity, source=cal.source)
    xi = record["xi"][rule]
    other = "mean+2std" if rule == "mean" else "mean"
    print(f"xi ({rule}) over {record['n_samples']} training samples"
          + (f" ({record['n_nonfinite']} non-finite, left out)" if record["n_nonfinite"] else "")
          + ": " + ", ".join(f"{n}={v:.6g}" for n, v in zip(names, xi)), flush=True)
    print(f"xi ({other}): " + ", ".join(f"{n}={v:.6g}" for n, v in zip(names, record["xi"][other])), flush=True)
    path = Path(args.out) if args.out else (cal.default_path or Path(f"amat_xi_{task.name}.json"))
    try:
        write_xi_file(path, record)
    except OSError as e:
        raise TaskError(f"could not write {path} ({e.strerror}); the thresholds are printed above: "
                        f"pass them as --adv-xi {','.join(f'{v:.6g}' for v in xi)}") from None
    print(f"written to {path}")
    print(task.xi_usage(path, xi, args))
    if margins_out is not None:
        write_margins(task, cal, xi, rule, names, args, margins_out)
    return 0


def margin_search_limit(task: Task, args: argparse.Namespace) -> float:
    if args.margin_max is not None:
        return float(args.margin_max)
    from amat_hooks.cli.options import parse_levels

    return 2.0 * max(parse_levels(task.default_levels))


def check_margin_options(task: Task, args: argparse.Namespace) -> Path | None:
    """``--margins-out``/``--margin-*`` checked before any model runs."""
    if not getattr(args, "margins_out", None):
        return None
    if not (isinstance(args.margin_steps, int) and args.margin_steps >= 1):
        raise TaskError(f"--margin-steps must be an integer >= 1, got {args.margin_steps!r}")
    mx = margin_search_limit(task, args)
    if not (math.isfinite(mx) and mx > 0):
        raise TaskError(f"--margin-max must be > 0, got {mx:g}")
    path = Path(args.margins_out)
    if args.out and path.resolve() == Path(args.out).resolve():
        raise TaskError("--margins-out and --out name the same file; give the margins their own file")
    check_writable(path, "--margins-out")
    return path


def write_margins(task: Task, cal: CalibrationSet, xi: list[float], rule: str, names: list[str],
                  args: argparse.Namespace, path: Path) -> None:
    """Per training sample the radius at which a term crosses xi (:func:`xi_radii`), written
    for ``--adv-margin-init``; the seconds it took are recorded (the cost of the start)."""
    mx, steps = margin_search_limit(task, args), int(args.margin_steps)
    ids: list = []
    radii: list = []
    t0 = time.perf_counter()
    for batch in progress(cal.task.batches(), total=cal.task.size(), desc=f"margins {task.name}",
                          enabled=not getattr(args, "no_progress", False)):
        if batch.ids is None:
            raise TaskError(f"the {task.name} task gives no training sample ids for its calibration batches, so "
                            f"its margins cannot be matched to a training run; leave --margins-out out")
        ids.extend(batch.ids)
        radii.extend(xi_radii(cal.task, batch.x, batch.target, xi, max_radius=mx, steps=steps))
    seconds = time.perf_counter() - t0
    record = initial_margins_record(task.name, ids, radii, max_radius=mx, steps=steps, xi=xi, rule=rule,
                                    term_names=names, seconds=seconds, identity=cal.identity, source=cal.source)
    write_initial_margins(path, record)
    found = sorted(r for r in radii if r is not None)
    med = f"{found[len(found) // 2]:.4g}" if found else "-"
    print(f"initial margins of {len(ids)} training samples ({seconds:.1f} s, {steps} steps): median radius {med}, "
          f"{sum(r == 0 for r in found)} already past xi without noise, {record['n_capped']} not broken within "
          f"{mx:g}; written to {path}")
    print(f"use: add --adv-margin-init {path} to the AMAT run (nnU-Net: AMAT_MARGIN_INIT={path}); each margin "
          f"starts at its radius, floored at Delta")
