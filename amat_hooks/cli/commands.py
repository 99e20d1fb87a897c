"""Core subcommands: ``amat demo`` and ``amat info``."""
from __future__ import annotations

import argparse
import time

from amat_hooks.hookspecs import hookimpl


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train STD/SAT/AMAT on generated data and print the robustness table",
                              description="Train STD, SAT and AMAT on generated data (no downloads), print "
                                          "per-epoch progress, a paper-style robustness table and whether the "
                                          "paper's pattern shows.")
    from amat_hooks.plugins import get_plugin_manager

    backends = demo_backends(get_plugin_manager())
    default = "loop" if "loop" in backends else sorted(backends)[0]
    p.add_argument("--backend", default=default, choices=sorted(backends),
                   help="which trainer runs the demo: " + "; ".join(f"{k}: {v[0]}" for k, v in sorted(backends.items()))
                   + f" (default {default})")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per method (loop: after the shared clean epochs; backend default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pgd-steps", type=int, default=None,
                   help="PGD steps of the evaluation attack (paper: 100; default: loop 20, nnunet 20)")
    p.add_argument("--out", default="amat_out/demo", help="folder for the report (md/csv/json/png)")
    g = p.add_argument_group("loop back end only (defaults: the documented demo)")
    g.add_argument("--clean-epochs", type=int, default=None,
                   help="epochs of the shared STD training every method starts from (xi is calibrated on it)")
    g.add_argument("--train-images", type=int, default=None, help="generated training images")
    g.add_argument("--test-images", type=int, default=None, help="generated test images")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1: the tensors are tiny, and more threads only "
                        "contend on a shared machine)")
    g.add_argument("--no-margin-init", action="store_true",
                   help="leave out the AMAT-init row (AMAT with margins started at each image's radius on "
                        "the STD model, as --adv-margin-init does)")
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
    return {"loop": ("the plain-PyTorch loop (AdversarialLoop) with a small CNN on generated 32x32 images, "
                     "~3-4 min on 2 CPU cores", _demo_loop)}


def _demo(args: argparse.Namespace) -> int:
    from amat_hooks.plugins import get_plugin_manager

    return demo_backends(get_plugin_manager())[args.backend][1](args)


def _demo_loop(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from amat_hooks.demo.loop import DemoSettings, run_loop_demo
    from amat_hooks.demo.verdict import pattern_verdict
    from amat_hooks.evaluation.report import to_markdown, write_report

    t0 = time.perf_counter()
    s = DemoSettings()
    over = {"epochs": args.epochs, "eval_pgd_steps": args.pgd_steps, "clean_epochs": args.clean_epochs,
            "train_images": args.train_images, "test_images": args.test_images, "threads": args.threads}
    s = replace(s, **{k: v for k, v in over.items() if v is not None})
    if getattr(args, "no_margin_init", False):
        s = replace(s, init_margins=False)
    print(f"amat demo (loop back end: plain PyTorch loop, seed {args.seed})", flush=True)
    for line in s.describe():
        print("  " + line, flush=True)
    out = run_loop_demo(s, seed=args.seed, log=lambda m: print(m, flush=True))
    results = out.results
    print(f"\nADI on {s.test_images} generated test images, clean and under {s.eval_pgd_steps}-step L2 PGD (P.) / "
          f"{s.ifgsm_steps}-step IFGSM (IF.):\n")
    print(to_markdown(results))
    print("\nseconds per training epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in out.seconds_per_epoch.items()))
    if out.margins:
        m = sorted(out.margins)
        print(f"AMAT margins after training: mean {sum(m) / len(m):.2f}, median {m[len(m) // 2]:.2f}, "
              f"max {m[-1]:.2f} (Delta {s.delta:g}; xi = [{', '.join(f'{v:.4g}' for v in out.xi)}])")
    init_lines = demo_init_lines(out)
    for line in init_lines:
        print(line)
    verdict = pattern_verdict(results, trivial=out.trivial)
    print("\nverdict (the paper's pattern on this run):")
    for ok, line in verdict:
        print(f"  [{'x' if ok else ' '}] {line}")
    held = sum(ok for ok, _ in verdict)
    print(f"  {held} of {len(verdict)} claims hold" + ("." if held == len(verdict) else
          " - see docs/performance.md (amat demo: three seeds) for what the default settings show."))
    notes = [f"{line}" for _, line in verdict] + init_lines + [
        f"xi = [{', '.join(f'{v:.4g}' for v in out.xi)}] from calibration from the demo's STD model"]
    title = f"amat demo (generated data, plain PyTorch loop, seed {args.seed})"
    paths = write_report(results, Path(args.out), name="demo", title=title, margins=out.margins, notes=notes)
    print(f"\nreport: {', '.join(str(p) for p in paths.values())}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def demo_init_lines(out) -> list[str]:
    """What AMAT-init (margins started at each sample's radius) did next to AMAT: where its
    margins started and ended, what the start cost against one AMAT epoch, and the robust and
    clean ADI differences (a measurement, not one of the paper's claims)."""
    if not out.initial_margins or "AMAT-init" not in out.results:
        return []
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    a, b = out.results["AMAT"], out.results["AMAT-init"]
    epoch = out.seconds_per_epoch.get("AMAT-init") or float("nan")
    return [
        f"AMAT-init margins: start median {med(out.initial_margins):.2f}, after training median "
        f"{med(out.init_margins_final):.2f} (AMAT: {med(out.margins):.2f}); the radius search took "
        f"{out.init_seconds:.1f} s = {out.init_seconds / epoch:.2f} of one AMAT-init epoch",
        f"AMAT-init - AMAT: PGD average {b.average('pgd') - a.average('pgd'):+.4f}, IFGSM average "
        f"{b.average('ifgsm') - a.average('ifgsm'):+.4f}, clean ADI {b.clean['ADI'] - a.clean['ADI']:+.4f}",
    ]


def _info(args: argparse.Namespace) -> int:
    from amat_hooks.plugins import get_plugin_manager

    pm = get_plugin_manager()
    print("registered plugins:")
    for name, plugin in pm.list_name_plugin():
        print(f"  {name}")
    return 0
