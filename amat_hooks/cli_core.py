"""Core subcommands: ``amat demo`` and ``amat info``."""
from __future__ import annotations

import argparse
import time

from .hookspecs import hookimpl


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train STD/SAT/AMAT on generated data and print the robustness table",
                              description="Train STD, SAT and AMAT on generated data (no downloads) and "
                                          "print a paper-style robustness table.")
    p.add_argument("--backend", default="loop", choices=["loop"], help="which trainer runs the demo")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="amat_out/demo", help="folder for the report (md/csv/json/png)")
    p.set_defaults(func=_demo)

    p = subparsers.add_parser("info", help="list registered adapters and subcommands")
    p.set_defaults(func=_info)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run_loop_demo
    from .evaluation import warn_if_weak
    from .report import to_markdown, write_report

    levels = (1.0, 2.0, 4.0)
    t0 = time.perf_counter()
    results, timing, margins = run_loop_demo(epochs=args.epochs, seed=args.seed, levels=levels)
    print("\nADI on generated test images, clean and under 100-step L2 PGD (P.) / 10-step IFGSM (IF.):\n")
    print(to_markdown(results))
    print("\nseconds per training epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
    notes = warn_if_weak(results)
    sats = {k: r for k, r in results.items() if k.startswith("SAT")}
    if sats and "AMAT" in results:
        best = max(sats, key=lambda k: sats[k].average("pgd"))
        a, s = results["AMAT"].average("pgd"), sats[best].average("pgd")
        notes.append(f"AMAT vs best SAT ({best}) robust average: {a:.4f} vs {s:.4f}"
                     + ("" if a >= s else " - SAT ahead at this small budget"))
    print("\n".join(notes))
    out = Path(args.out)
    paths = write_report(results, out, name="demo", title="amat demo (generated data, generic loop)",
                         margins=margins)
    print(f"\nreport: {', '.join(str(p) for p in paths.values())}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    pm = get_plugin_manager()
    print("registered plugins:")
    for name, plugin in pm.list_name_plugin():
        print(f"  {name}")
    return 0
