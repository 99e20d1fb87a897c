"""Evaluation speed (run by hand), written to docs/perf_eval.md:

1. radius: ONE radius run (minimal-norm attack, per-sample radius) vs the per-level
   evaluation at 7 levels (all levels of a batch in one attack call, as ``amat eval`` does),
   the same objective (masked CE) and steps; goal: time ratio <= 0.5. Also how well the
   radius curve matches the per-level curve (share of samples not broken at each level).
2. worst: one evaluation with N attacks + ``worst`` vs N separate single-attack
   evaluations; goal: ratio <= 1.0.
3. (``--batched``) all levels in one call vs one call per level (the older measurement).

Timed in process CPU seconds with one torch thread (the CPU is shared: CPU time is what a
contender itself used, wall time also counts the neighbours), contenders alternating
within each round, ratios taken per round (paired) and their median reported. The model
is a TinySegNet trained for a few clean epochs on generated shapes (an untrained model
breaks at once and says nothing about the search).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amat_hooks.config import AdvConfig  # noqa: E402
from amat_hooks.demo.loop import train_one  # noqa: E402
from amat_hooks.zoo.segnets import TinySegNet, seg_loss_terms  # noqa: E402
from amat_hooks.evaluation import RadiusSpec, robustness_eval  # noqa: E402
from amat_hooks.evaluation.segmentation import SegmentationEvalTask  # noqa: E402
from amat_hooks.zoo.shapes import shapes_segmentation  # noqa: E402

#: everything from this heading on in the output file is kept by a rerun (GPU runs pasted in by
#: hand, the older batched-levels measurement); ``--batched`` replaces the latter
KEEP_HEAD = "## Other devices and earlier measurements"
BATCHED_HEAD = "### Batched levels vs one call per level"


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    t0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync()
    return out, time.process_time() - t0, time.perf_counter() - w0


def rounds(contenders: dict, n: int) -> tuple[dict, dict, dict]:
    """Alternate the contenders n times (the order flips every round); CPU and wall seconds."""
    cpu = {k: [] for k in contenders}
    wall = {k: [] for k in contenders}
    last = {}
    keys = list(contenders)
    for i in range(n):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            last[k], c, w = timed(contenders[k])
            cpu[k].append(c)
            wall[k].append(w)
            print(f"  round {i + 1} {k}: {c:.1f} s CPU, {w:.1f} s wall", flush=True)
    return cpu, wall, last


def paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--levels", default="2,4,6,8,10,12,14")
    ap.add_argument("--steps", type=int, default=100, help="PGD steps per level and radius steps")
    ap.add_argument("--worst-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument("--batched", action="store_true", help="also the older batched-levels measurement")
    ap.add_argument("--device", default="cpu", help="cpu (CPU time is the measure) or cuda (wall time is)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fair on a shared CPU)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "perf_eval.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    levels = [float(v) for v in a.levels.split(",")]
    xtr, ytr = shapes_segmentation(96 if a.train_epochs else 1, a.size, seed=0)
    print("training the model ...", flush=True)
    if a.train_epochs:
        model, _, _ = train_one(AdvConfig(mode="none"), xtr, ytr, a.train_epochs, 16, 0, lambda s: None)
    else:  # timing only (demo.train_one divides by the epoch count)
        torch.manual_seed(0)
        model = TinySegNet()
    model.eval()
    x, y = shapes_segmentation(a.n, a.size, seed=7)
    dev = torch.device(a.device)
    model, x, y = model.to(dev), x.to(dev), y.to(dev)
    task = SegmentationEvalTask(model, x, y, seg_loss_terms, batch_size=a.batch)
    robustness_eval(task, levels[:1], attacks=("mce",), pgd_steps=2, progress=False,
                    radius=RadiusSpec(objectives=("mce",), steps=2))  # warm-up (CUDA kernels, caches)

    # 1. radius vs per level -------------------------------------------------------------------
    print("radius vs per-level ...", flush=True)
    spec = RadiusSpec(objectives=("mce",), steps=a.steps)
    cpu, wall, last = rounds({
        "per level": lambda: robustness_eval(task, levels, attacks=("mce",), pgd_steps=a.steps, progress=False),
        "radius": lambda: robustness_eval(task, levels, attacks=(), radius=spec, progress=False),
    }, a.rounds)
    per, rad = last["per level"], last["radius"]
    r_cpu, r_wall = paired(cpu["radius"], cpu["per level"]), paired(wall["radius"], wall["per level"])
    pl_curve, rad_curve = per.unbroken_fraction("mce", 0.5, True), rad.radius_curve()
    radii = rad.radii()
    clean = per.sample_scores("clean", 0)
    only_per, only_rad = [], []
    for lv in levels:  # samples one side breaks at this level and the other does not
        bp = per.broken(per.sample_scores("mce", lv), clean, 0.5, True)
        br = [r <= lv for r in radii]
        only_per.append(sum(p and not q for p, q in zip(bp, br)))
        only_rad.append(sum(q and not p for p, q in zip(bp, br)))

    # 2. worst over N attacks vs N evaluations ----------------------------------------------------------
    print("worst vs separate ...", flush=True)
    attacks = ("pgd", "segpgd", "cospgd", "mce")
    cpu_w, wall_w, last_w = rounds({
        "one evaluation, worst": lambda: robustness_eval(task, levels, attacks=(*attacks, "worst"),
                                                         pgd_steps=a.worst_steps, progress=False),
        "separate": lambda: [robustness_eval(task, levels, attacks=(at,), pgd_steps=a.worst_steps, progress=False)
                             for at in attacks],
    }, a.rounds)
    w_cpu = paired(cpu_w["one evaluation, worst"], cpu_w["separate"])
    w_wall = paired(wall_w["one evaluation, worst"], wall_w["separate"])
    wres = last_w["one evaluation, worst"]
    load1 = os.getloadavg()

    kept = ""
    if Path(a.out).exists():
        old = Path(a.out).read_text()
        if KEEP_HEAD in old:
            kept = old[old.index(KEEP_HEAD):]
    if a.batched:
        new = bench_batched(task, a)
        if BATCHED_HEAD in kept:
            kept = kept[:kept.index(BATCHED_HEAD)] + new
        else:
            kept = (kept or KEEP_HEAD + "\n\n") + new

    med = lambda v: statistics.median(v)  # noqa: E731
    lv_cols = " | ".join(f"{lv:g}" for lv in levels)
    gpu = dev.type == "cuda"
    if gpu:
        where = (f"on one {torch.cuda.get_device_name(dev)} (torch {torch.__version__}); wall time with "
                 f"CUDA synchronisation is the measure (CPU time is the host's, for reference)")
        r_main, w_main = r_wall, w_wall
    else:
        where = (f"on this {os.cpu_count()}-core CPU machine, shared with other engineers: load average "
                 f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1/5/15 min) at the start, {load1[0]:.1f} / "
                 f"{load1[1]:.1f} / {load1[2]:.1f} at the end; one torch thread; process CPU time is the measure "
                 f"(what a contender itself used; wall time also counts the neighbours, for reference)")
        r_main, w_main = r_cpu, w_cpu
    unit = "wall" if gpu else "CPU"
    md = f"""# Evaluation speed (bench/bench_eval.py)

Measured {time.strftime('%Y-%m-%d')} {where}. Contenders alternate within each of {a.rounds}
rounds (the order flips every round); ratios are the median of the per-round (paired)
ratios. TinySegNet {f"trained {a.train_epochs} clean epochs on 96 generated {a.size}x{a.size} images" if a.train_epochs else "UNTRAINED (timing only: the curves below mean nothing)"};
{a.n} test images, B={a.batch}; 7 levels {levels} (the paper's presets have 3 levels each; here 7
levels spanning this model's radii, as the issue asks). Re-run: `.venv/bin/python
bench/bench_eval.py [--device cuda]` (`--batched` adds the older batched-levels section).

## 1. Robust radius from one run vs the per-level evaluation

Per level: `robustness_eval(levels, attacks=("mce",), pgd_steps={a.steps})`, all 7 levels of a
batch in one attack call (7B rows x {a.steps} steps). Radius: `robustness_eval(levels, attacks=(),
radius=RadiusSpec(objectives=("mce",), steps={a.steps}))`, one minimal-norm run on the B rows
({a.steps} steps + 1 check), a sample broken when its Dice falls below half its clean Dice.

| evaluation | CPU time (median) | wall (median) |
|---|---|---|
| per level, 7 levels batched | {med(cpu['per level']):.2f} s | {med(wall['per level']):.2f} s |
| one radius run | {med(cpu['radius']):.2f} s | {med(wall['radius']):.2f} s |
| radius / per level | {r_cpu:.3f} | {r_wall:.3f} |

**radius / per level = {r_main:.3f}** ({unit} time; goal <= 0.5).

What both say (share of the {a.n} samples NOT broken at each level; same threshold):

| level | {lv_cols} |
|---|{'---|' * len(levels)}
| per level ({a.steps}-step PGD, masked CE) | {' | '.join(f'{v:.3f}' for v in pl_curve)} |
| radius run | {' | '.join(f'{v:.3f}' for v in rad_curve)} |
| broken per level only | {' | '.join(str(v) for v in only_per)} |
| broken by the radius run only | {' | '.join(str(v) for v in only_rad)} |

AUC_robust of the share-not-broken curve: per level {_auc(pl_curve, levels):.4f}, radius
{rad.radius_auc():.4f}. Radii: median {statistics.median(radii):.2f}; {sum(r == float('inf') for r in radii)} of {a.n}
not broken within {rad.radius['max_radius']:g}. A radius is an upper bound of the sample's
minimal radius (a breaking point was found there and measured again by the task), precise to
the last radius step (0.5 %). Where the curves differ, the radius run is the stronger attack:
it checks the metric at every iterate, while a per-level PGD keeps only its last iterate (which
maximises the loss, not the Dice drop); "broken per level only" counts what the radius run
misses.

## 2. `worst` over N attacks vs N separate evaluations

{len(attacks)} attacks ({', '.join(attacks)}), 7 levels, {a.worst_steps}-step PGD each: one evaluation with
`--attacks {','.join(attacks)},worst` vs {len(attacks)} evaluations with one attack each.

| evaluation | CPU time (median) | wall (median) |
|---|---|---|
| one evaluation + worst | {med(cpu_w['one evaluation, worst']):.2f} s | {med(wall_w['one evaluation, worst']):.2f} s |
| {len(attacks)} separate evaluations | {med(cpu_w['separate']):.2f} s | {med(wall_w['separate']):.2f} s |
| one + worst / separate | {w_cpu:.3f} | {w_wall:.3f} |

**one + worst / separate = {w_main:.3f}** ({unit} time; goal <= 1.0).

The saving is the clean forward and the random-noise baseline done once instead of N times;
the worst case itself is a per-sample selection over the kept statistics (no forward pass).
Worst-case ADI at the largest level: {wres.noisy['worst'][levels[-1]]['ADI']:.4f} vs
{', '.join(f"{at} {wres.noisy[at][levels[-1]]['ADI']:.4f}" for at in attacks)}.

{kept}"""
    Path(a.out).write_text(md.rstrip() + "\n")
    print(md)


def _auc(curve, levels):
    from amat_hooks.evaluation.metrics import auc_robust

    return auc_robust(1.0, curve, levels)


def bench_batched(task0, a) -> str:
    """The older measurement: 3 levels x (PGD + IFGSM) batched vs one call per level."""
    torch.manual_seed(0)
    model = TinySegNet()
    x, y = shapes_segmentation(48, a.size, seed=3)
    levels = [1.0, 2.0, 4.0]

    def run(levels_, batch):
        task = SegmentationEvalTask(model, x, y, seg_loss_terms, batch_size=batch)
        return robustness_eval(task, levels_, pgd_steps=20, progress=False)

    cpu, _, _ = rounds({
        "batched (B images x 3 levels per call)": lambda: run(levels, a.batch),
        "per level, same images per call (B)": lambda: [run([lv], a.batch) for lv in levels],
        "per level, same batch memory (3B images)": lambda: [run([lv], 3 * a.batch) for lv in levels],
    }, a.rounds)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    base = med["batched (B images x 3 levels per call)"]
    rows = "\n".join(f"| {k} | {v:.2f} s | {base / v:.2f} |" for k, v in med.items())
    return f"""{BATCHED_HEAD} (measured {time.strftime('%Y-%m-%d')})

TinySegNet (untrained), 48 generated 32x32 images, B={a.batch}, levels {levels}, 20-step PGD +
10-step IFGSM, one torch thread, process CPU time, median of {a.rounds} alternating rounds.

| evaluation | CPU time | batched / this |
|---|---|---|
{rows}

A batched call and a per-level call at the same memory push the same rows through the same
convolutions, and CPU convolution time is proportional to rows: batching saves only per-call
overhead on a CPU.
"""


if __name__ == "__main__":
    main()
