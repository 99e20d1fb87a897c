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
    p.add_argument("--out", default=None, help="folder for the table (markdown)")
    p.set_defaults(func=_demo)

    p = subparsers.add_parser("info", help="list registered adapters and subcommands")
    p.set_defaults(func=_info)


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_loop_demo

    levels = (1.0, 2.0, 4.0)
    t0 = time.perf_counter()
    results = run_loop_demo(epochs=args.epochs, seed=args.seed, levels=levels)
    table = format_table(results, levels)
    print("\nADI on generated test images under 100-step L2 PGD (P.) and 10-step IFGSM (IF.):\n")
    print(table)
    std = next(r for r in results if r.label == "STD")
    amat = next(r for r in results if r.label == "AMAT")
    sats = [r for r in results if r.label.startswith("SAT")]
    verdict = []
    verdict.append(f"AMAT robust avg (PGD) {amat.pgd_avg:.4f} vs STD {std.pgd_avg:.4f}: "
                   + ("AMAT higher, as the paper claims" if amat.pgd_avg > std.pgd_avg
                      else "AMAT NOT higher at this budget"))
    best_sat = max(sats, key=lambda r: r.pgd_avg)
    verdict.append(f"AMAT vs best SAT ({best_sat.label}) robust avg: {amat.pgd_avg:.4f} vs {best_sat.pgd_avg:.4f}"
                   + ("" if amat.pgd_avg >= best_sat.pgd_avg else " (SAT ahead at this budget)"))
    print("\n" + "\n".join(verdict))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.out:
        from pathlib import Path

        from .io import atomic_write_text

        atomic_write_text(Path(args.out) / "demo_table.md", table + "\n\n" + "\n".join(verdict) + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    pm = get_plugin_manager()
    print("registered plugins:")
    for name, plugin in pm.list_name_plugin():
        print(f"  {name}")
    return 0
