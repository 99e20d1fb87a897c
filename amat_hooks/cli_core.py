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
    from .plugins import get_plugin_manager

    backends = demo_backends(get_plugin_manager())
    default = "nnunet" if "nnunet" in backends else "loop"
    p.add_argument("--backend", default=default, choices=sorted(backends),
                   help="which trainer runs the demo: " + "; ".join(f"{k}: {v[0]}" for k, v in sorted(backends.items()))
                   + f" (default {default})")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per method (backend default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pgd-steps", type=int, default=None,
                   help="PGD steps of the evaluation attack (paper: 100; backend default: loop 100, nnunet 20)")
    p.add_argument("--out", default="amat_out/demo", help="folder for the report (md/csv/json/png)")
    p.set_defaults(func=_demo)

    p = subparsers.add_parser("info", help="list registered adapters and subcommands")
    p.set_defaults(func=_info)


def demo_backends(pm) -> dict:
    found: dict = {}
    for result in pm.hook.amat_demo_backends():
        found.update(result)
    return found


@hookimpl
def amat_demo_backends() -> dict:
    return {"loop": ("generic PyTorch loop, tiny CNN, ~1 min", _demo_loop)}


def _demo(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    return demo_backends(get_plugin_manager())[args.backend][1](args)


def _demo_loop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run_loop_demo
    from .evaluation import warn_if_weak
    from .report import to_markdown, write_report

    levels = (1.0, 2.0, 4.0)
    t0 = time.perf_counter()
    results, timing, margins = run_loop_demo(epochs=args.epochs or 12, seed=args.seed, levels=levels,
                                             pgd_steps=args.pgd_steps or 100)
    print("\nADI on generated test images, clean and under 100-step L2 PGD (P.) / 10-step IFGSM (IF.):\n")
    print(to_markdown(results))
    print("\nseconds per training epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
    notes = warn_if_weak(results)
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
