"""``amat calibrate <task>``: xi from a clean model (paper section 2.2), written once for
every task: the task scores the training split, this module computes both rules, writes
the one xi file schema (:mod:`amat_hooks.state`) and says how to use it."""
from __future__ import annotations

import argparse
from pathlib import Path

from amat_hooks.state import write_xi_file, xi_record
from amat_hooks.tasks import Task


def run_calibrate(task: Task, args: argparse.Namespace) -> int:
    task.check(args, "calibrate")
    cal = task.calibration_set(args)
    rule = args.rule or task.xi_rule
    record = xi_record(task.name, cal.terms, cal.term_names, rule, identity=cal.identity, source=cal.source)
    path = Path(args.out) if args.out else task.default_xi_path(args, cal)
    write_xi_file(path, record)
    xi = record["xi"][rule]
    other = "mean" if rule != "mean" else "mean+2std"
    terms = ", ".join(f"{n}={v:.6g}" for n, v in zip(cal.term_names, xi))
    print(f"xi ({rule}) over {record['n_samples']} training samples"
          + (f" ({record['n_nonfinite']} non-finite, left out)" if record["n_nonfinite"] else "")
          + f": {terms}")
    print(f"xi ({other}): " + ", ".join(f"{n}={v:.6g}" for n, v in zip(cal.term_names, record["xi"][other])))
    print(f"written to {path}")
    print(task.xi_usage(path, xi, args))
    return 0
