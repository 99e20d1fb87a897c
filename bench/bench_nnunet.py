"""nnU-Net benchmark (run by hand): seconds per training iteration, STD vs SAT vs AMAT.

All trainers are real ``nnUNetTrainerSTD/SAT/AMAT`` instances on the generated dataset
(CPU), built in one process and fed the SAME pre-fetched batches; contenders alternate
round by round and medians are reported, so ratios come from one run. SAT and AMAT use
the same PGD steps; SAT's eps equals AMAT's initial margin. Also measured: the cost of
scoring the loss per sample (nnU-Net's loss called once per sample) against one batch
call, as a share of an AMAT iteration. Target: AMAT/SAT <= 1.03.

Usage: .venv/bin/python bench/bench_nnunet.py [--rounds 5] [--iters 3] [--batch 12]
       [--steps 10] [--out docs/perf_nnunet.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET_ID = 990


def prepare(root: Path) -> None:
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1")
    if not (root / "pre" / "Dataset990_AMATShapes" / "nnUNetPlans_2d").is_dir():
        subprocess.run([str(BIN / "amat"), "nnunet-generate", "--id", str(DATASET_ID), "--raw", str(root / "raw")],
                       env=env, check=True, capture_output=True)
        subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"],
                       env=env, check=True, capture_output=True)
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                      nnUNet_results=str(root / "res"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0")


def build(trainer_name: str, env: dict[str, str], batch: int):
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    for k in [k for k in os.environ if k.startswith("AMAT_")]:
        del os.environ[k]
    os.environ.update(env)
    tr = get_trainer_from_args(str(DATASET_ID), "2d", 0, trainer_name, device=torch.device("cpu"))
    tr.initialize()
    tr.batch_size = batch
    return tr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="iterations per contender per round")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps (SAT and AMAT)")
    ap.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_nnunet_"))
    prepare(root)

    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    common = {"AMAT_STEPS": str(args.steps)}
    contenders = {
        "STD": ("nnUNetTrainerSTD", {}),
        "SAT": ("nnUNetTrainerSAT", {**common, "AMAT_EPS": "1.0"}),
        "AMAT": ("nnUNetTrainerAMAT", {**common, "AMAT_XI_SOURCE": "online", "AMAT_STEP": "1.0"}),
        "AMAT-stop": ("nnUNetTrainerAMAT", {**common, "AMAT_XI_SOURCE": "online", "AMAT_STEP": "1.0",
                                            "AMAT_BOUNDARY": "stop"}),
    }
    trainers = {name: build(tr, env, args.batch) for name, (tr, env) in contenders.items()}
    first = next(iter(trainers.values()))
    dl, _ = first.get_dataloaders()
    n_batches = args.iters * args.rounds + 2
    batches = [next(dl) for _ in range(n_batches)]

    def clone(b):
        return {k: (v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v] if k == "target"
                    and isinstance(v, list) else v) for k, v in b.items()}

    for tr in trainers.values():  # warm-up: 2 iterations each
        tr.network.train()
        for b in batches[:2]:
            tr.train_step(clone(b))
    times = {name: [] for name in trainers}
    steps_run = {name: [] for name in trainers}
    for r in range(args.rounds):
        for name, tr in trainers.items():
            for i in range(args.iters):
                b = clone(batches[2 + r * args.iters + i])
                t0 = time.perf_counter()
                tr.train_step(b)
                times[name].append(time.perf_counter() - t0)
                last = getattr(tr, "amat_last", None)
                if last is not None and last.attack is not None:
                    steps_run[name].append(last.attack.steps_run)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other processes on a shared CPU

    # per-sample loss scoring vs one batch call of the same loss (forward + backward to the output)
    from amat_hooks.integrations.nnunet.adapter import per_sample_terms

    tr = trainers["AMAT"]
    b = clone(batches[-1])
    x = b["data"]
    tgt = b["target"]
    with torch.no_grad():
        out = tr.network(x)

    def loss_batch():
        o = [t.detach().requires_grad_(True) for t in out]
        tr.loss(o, tgt).backward()

    def loss_per_sample():
        o = [t.detach().requires_grad_(True) for t in out]
        per_sample_terms(tr.loss, o, tgt, True).sum().backward()

    lb, lp = [], []
    for _ in range(max(5, args.rounds * 2)):
        for fn, acc in ((loss_batch, lb), (loss_per_sample, lp)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    t_lb, t_lp = statistics.median(lb), statistics.median(lp)
    amat_steps = statistics.mean(steps_run["AMAT"]) if steps_run["AMAT"] else float("nan")
    calls = amat_steps + 2  # Algorithm 1: the PGD steps, and the terms of the clean and the noisy forward
    overhead = calls * (t_lp - t_lb)

    lines = [
        "# nnU-Net: seconds per training iteration (STD / SAT / AMAT)",
        "",
        f"Generated dataset (Dataset990, 2d, patch 32x32, nnU-Net PlainConvUNet 4 stages), batch {args.batch}, "
        f"CPU ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), PGD steps {args.steps} for SAT and AMAT (SAT eps 1.0 = AMAT "
        f"initial margin, online xi; AMAT = Algorithm 1, AMAT-stop = the boundary-stop variant). {args.rounds} rounds x {args.iters} iterations, contenders alternating, "
        f"same batches; median and minimum per contender. Command: `.venv/bin/python bench/bench_nnunet.py "
        f"--rounds {args.rounds} --iters {args.iters} --batch {args.batch} --steps {args.steps}`.",
        "",
        "| trainer | median s / it | min s / it | median vs STD | median vs SAT | min vs SAT | mean PGD steps run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in med.items():
        sr = f"{statistics.mean(steps_run[name]):.1f}" if steps_run[name] else "-"
        lines.append(f"| {name} | {t:.3f} | {best[name]:.3f} | {t / med['STD']:.2f} | {t / med['SAT']:.2f} | "
                     f"{best[name] / best['SAT']:.2f} | {sr} |")
    ratio, ratio_min = med["AMAT"] / med["SAT"], best["AMAT"] / best["SAT"]
    # paired: AMAT and SAT iterations of the same round ran seconds apart, so a burst of load from
    # other processes hits both; the median of these ratios is the most robust number here
    paired = statistics.median(a / s for a, s in zip(times["AMAT"], times["SAT"]))
    paired0 = statistics.median(a / s for a, s in zip(times["AMAT-stop"], times["SAT"]))
    lines += [
        "",
        f"**AMAT / SAT = {paired:.3f} (median of per-round paired ratios)**; {ratio:.3f} (medians), "
        f"{ratio_min:.3f} (minima); target <= 1.03: {'met' if paired <= 1.03 else 'NOT met'}. "
        f"AMAT-stop (AMAT_BOUNDARY=stop) / SAT = {paired0:.3f} (paired), "
        f"{med['AMAT-stop'] / med['SAT']:.3f} (medians), {best['AMAT-stop'] / best['SAT']:.3f} (minima). "
        f"1-minute load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "Per-sample loss scoring (nnU-Net's own loss called once per sample so each sample has its "
        "own term): forward + backward of the loss alone on one batch output: "
        f"one batch call {t_lb * 1e3:.1f} ms, per-sample calls {t_lp * 1e3:.1f} ms "
        f"(+{(t_lp - t_lb) * 1e3:.1f} ms per scoring). With ~{calls:.0f} scorings per AMAT iteration "
        f"that is ~{overhead:.2f} s = {100 * overhead / med['AMAT']:.0f}% of an AMAT iteration "
        f"(SAT pays the same per PGD step).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    print("raw times:", {k: [round(v, 4) for v in vs] for k, vs in times.items()})
    report += "\nRaw seconds per iteration: " + json.dumps({k: [round(v, 3) for v in vs] for k, vs in times.items()}) + "\n"
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
