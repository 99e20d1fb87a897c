"""Benchmark of `amat run` on the example Multi-Task U-Net script (run by hand).

CPU seconds per training epoch, as the script itself prints them (``cpu X s``: the process's
``time.process_time``, every thread, the runner's work included) for: the script alone,
``amat run --adv none`` (the runner's overhead), SAT and AMAT with the paper's protocol and
with the authors' (``--adv-protocol authors``), SAT and AMAT of one protocol with the same PGD
steps (paper 10, authors 20), both with the runner's default of two separate forward passes
for the clean and the noisy rows (``--joint`` adds ``--adv-batch joint``, one forward of 2B
rows). All runs in one invocation, on generated ISBI-layout data, in alternating rounds (each
round runs every configuration once, the order reversed every other round); epoch 0 (image
decoding, first-batch checks) is not counted; ratios are medians of per-round paired ratios.
Targets: AMAT / SAT <= 1.03 and ``--adv none`` / script alone <= 1.02 (issue 26),
AMAT-authors / SAT-authors <= 1.05 (issue 27). ``--pairs N`` adds in-process pairs that
alternate the two sides batch by batch.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_runner.py --threads 1 --write docs/perf_runner.md
    python3 bench/bench_runner.py --device cuda --size 200 160 --images 16 --batch-size 8
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "landmark" / "train.py"
sys.path.insert(0, str(REPO))

from bench.common import load, machine, order, paired, quantile, spread, verdict  # noqa: E402


def epoch_times(stdout: str) -> list[float]:
    """Wall-clock seconds of each training epoch, as the script prints them."""
    return [float(m) for m in re.findall(r"^Epoch \d+ train rows \d+ .*\(([\d.]+) s\)", stdout, re.M)]


def epoch_cpu(stdout: str) -> list[float]:
    """Process CPU seconds (all threads) of each training epoch."""
    return [float(m) for m in re.findall(r"^Epoch \d+ train rows \d+ .*\) cpu ([\d.]+) s$", stdout, re.M)]


def amat_command() -> list[str]:
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


CHEAP = ("script alone", "amat run --adv none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[32, 32])
    ap.add_argument("--landmarks", type=int, default=19)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of SAT and AMAT runs; epoch 0 is warm-up "
                                                          "(image decoding) and not counted")
    ap.add_argument("--plain-epochs", type=int, default=8, help="epochs of the script alone and --adv none")
    ap.add_argument("--pgd-steps", type=int, default=None,
                    help="PGD steps for every SAT and AMAT (default: each protocol's, paper 10, authors 20)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating repetitions of all runs (0: none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads in every run (OMP_NUM_THREADS / torch.set_num_threads); on a "
                         "shared, loaded CPU 1 avoids oversubscription and spinning")
    ap.add_argument("--joint", action="store_true", help="also time SAT and AMAT with --adv-batch joint")
    ap.add_argument("--pairs", type=int, default=0,
                    help="also N in-process pairs per comparison, alternating batch by batch (SAT vs AMAT, "
                         "script alone vs --adv none): fine-grained pairing under shifting load")
    ap.add_argument("--write", default=None, help="markdown file for the results")
    args = ap.parse_args()

    amat = amat_command()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    steps = ["--adv-steps", str(args.pgd_steps)] if args.pgd_steps else []
    # the runner is told the script's heatmap term, so the first batch's noise is made against it too
    sat = ["run", "--heatmap-loss", "dice", "--adv", "sat", "--adv-eps", "1", *steps]
    am = ["run", "--heatmap-loss", "dice", "--adv", "amat", "--adv-step", "1", "--adv-xi-rule", "mean+2std", *steps]
    authors = ["--adv-protocol", "authors"]
    script = ["--", "python", str(SCRIPT)]
    runs = {
        "script alone": [sys.executable, str(SCRIPT)],
        "amat run --adv none": amat + ["run", "--heatmap-loss", "dice", "--adv", "none", *script],
        "SAT": amat + sat + script,
        "AMAT": amat + am + script,
        "SAT-authors": amat + sat + authors + script,
        "AMAT-authors": amat + am + authors + script,
    }
    if args.joint:
        runs["SAT, --adv-batch joint"] = amat + sat + ["--adv-batch", "joint"] + script
        runs["AMAT, --adv-batch joint"] = amat + am + ["--adv-batch", "joint"] + script
    times: dict[str, list[float]] = {name: [] for name in runs}   # per round: median over the counted epochs
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    loads: list[float] = []
    notes: dict[str, str] = {}
    t_start = time.time()
    load0 = load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            from amat_hooks.zoo.isbi_writers import write_generated_isbi
        except ImportError:  # before the ISBI module was split
            from amat_hooks.zoo.isbi import write_generated_isbi

        data = write_generated_isbi(tmp / "data", n=args.images + 2, height=2 * args.size[0],
                                    width=2 * args.size[1], num_landmarks=args.landmarks, seed=0)
        common = ["--data", str(data), "--train-ids", f"1-{args.images}", "--val-ids", f"{args.images + 1}",
                  "--size", *map(str, args.size), "--num-landmarks", str(args.landmarks), "--batch-size",
                  str(args.batch_size), "--save-every", "1000", "--heatmap-loss", "dice", "--device", args.device]
        for rnd in range(args.rounds):
            for name in order(list(runs), rnd):
                out = tmp / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}_{rnd}"
                loads.append(load())
                epochs = args.plain_epochs if name in CHEAP else args.epochs
                t0 = time.perf_counter()
                r = subprocess.run(runs[name] + common + ["--epochs", str(epochs), "--out", str(out)],
                                   capture_output=True, text=True, cwd=tmp, env=env)
                wall = time.perf_counter() - t0
                if r.returncode != 0:
                    print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{name} failed")
                t, c = epoch_times(r.stdout)[1:], epoch_cpu(r.stdout)[1:]
                if len(c) != epochs - 1:
                    raise SystemExit(f"{name}: {len(c) + 1} epoch lines for {epochs} epochs:\n{r.stdout[-2000:]}")
                times[name].append(statistics.median(t))
                cpu[name].append(statistics.median(c))
                if name not in notes:
                    lines_ = r.stdout.splitlines()
                    notes[name] = "; ".join(ln.strip() for ln in lines_ if ln.startswith("[amat] adapter:")
                                            or "xi = " in ln)
                print(f"round {rnd} {name}: cpu " + ", ".join(f"{v:.2f}" for v in c) + " s/epoch (wall "
                      + ", ".join(f"{v:.2f}" for v in t) + f"), process wall {wall:.0f} s, load {loads[-1]:.1f}",
                      flush=True)
        pair_lines = in_process_pairs(args, data, loads) if args.pairs else []
    minutes = (time.time() - t_start) / 60
    dev = args.device if args.device == "cpu" else f"{args.device} ({_gpu_name()})"
    cmd = (f"OMP_NUM_THREADS={args.threads} .venv/bin/python bench/bench_runner.py --device {args.device} --size "
           f"{args.size[0]} {args.size[1]} --images {args.images} --batch-size {args.batch_size} --epochs {args.epochs} "
           f"--plain-epochs {args.plain_epochs} --rounds {args.rounds} --threads {args.threads}"
           + (f" --pgd-steps {args.pgd_steps}" if args.pgd_steps else "") + (f" --pairs {args.pairs}" if args.pairs
                                                                            else "")
           + (" --joint" if args.joint else "") + (f" --write {args.write}" if args.write else ""))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/bench_runner.py` on {machine(args.threads)}; {dev}.",
        f"The example script (`examples/landmark/train.py`, the Multi-Task U-Net with its VGG19 encoder) on "
        f"{args.images} generated ISBI-layout images at {args.size[0]}x{args.size[1]}, {args.landmarks} landmarks, "
        f"batch {args.batch_size} ({args.images // args.batch_size} batches per epoch), `--heatmap-loss dice`; "
        f"{args.epochs} epochs per SAT / AMAT run and {args.plain_epochs} per script-alone / `--adv none` run (epoch 0 "
        f"not counted), {args.rounds} alternating rounds, one process per run. SAT eps 1, AMAT Delta 1 with online xi "
        f"(mean + 2 std; under the authors' protocol the runner takes their published preset `authors:landmark`). "
        f"Paper: 10 PGD steps of 2.5 E / 10; authors: 20 steps of 5 E / 20, start on the sphere, acceptance at every "
        f"iterate, per-epoch margin updates, margins capped at 10 Delta and never refined, noise clamped to the "
        f"input range, PGD forwards in train mode, the heatmap term 0.5 x Dice against the binary mask.",
        f"1-minute load average before the runs: mean {statistics.mean(loads):.1f}, min {min(loads):.1f}, max "
        f"{max(loads):.1f} ({load0:.1f} at the start); {minutes:.1f} min wall in all." if loads else "",
        "",
        f"Command: `{cmd}`",
    ]
    targets = [("AMAT", "SAT", 1.03, "issue 26"), ("amat run --adv none", "script alone", 1.02, "issue 26"),
               ("AMAT-authors", "SAT-authors", 1.05, "issue 27")]
    if args.joint:
        targets += [("SAT", "SAT, --adv-batch joint", None, "two passes / one"),
                    ("AMAT", "AMAT, --adv-batch joint", None, "two passes / one")]
    for label, data_, primary in (("process CPU seconds per epoch (all threads)", cpu, True),
                                  ("wall-clock seconds per epoch (shared machine: for the record)", times, False)):
        if not args.rounds:
            continue
        lines += ["", f"**{label}**", "",
                  "| run | median of rounds | min | x script alone | per round |", "|---|---|---|---|---|"]
        base = statistics.median(data_["script alone"])
        for name in runs:
            med = statistics.median(data_[name])
            lines.append(f"| {name} | {med:.3f} | {min(data_[name]):.3f} | {med / base:.2f} | "
                         + ", ".join(f"{v:.3f}" for v in data_[name]) + " |")
        lines += ["", "| ratio (median of per-round paired ratios) | measured (quartiles) | target | verdict | per round |",
                  "|---|---|---|---|---|"]
        for a, b, target, what in targets:
            r_, rr = paired(data_[a], data_[b])
            v = (verdict(r_, target) if primary else "(wall)") if target else "report"
            lines.append(f"| {a} / {b} ({what}) | {'**' if primary else ''}{r_:.3f}{'**' if primary else ''} "
                         f"({spread(rr)}) | "
                         f"{'<= ' + str(target) if target else ''} | {v} | " + ", ".join(f"{x:.3f}" for x in rr) + " |")
    lines += ["", "What the runs said (adapter, xi): " + " | ".join(f"{k}: {v}" for k, v in notes.items() if v)]
    lines += pair_lines
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n", encoding="utf-8")
    return 0


def in_process_pairs(args: argparse.Namespace, data: Path, loads: list[float]) -> list[str]:
    """The example script's own training step (its network, data loader and loss code), one
    batch at a time, under the runner's patches exactly as ``amat run`` installs them; the
    two sides of a comparison alternate batch by batch (the order flips every pair), so a
    load change hits both sides of a pair alike. Returns markdown lines."""
    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(SCRIPT.parent))
    import importlib

    from amat_hooks.config import AdvConfig
    from amat_hooks.run import Patches, Runner

    ex_data, ex_net, ex_train = (importlib.import_module(m) for m in ("data_loader", "network", "train"))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = ex_data.Cephalometric(str(data), list(range(1, args.images + 1)), num_landmark=args.landmarks,
                               size=tuple(args.size))
    net = ex_net.UNet_Pretrained(3, args.landmarks).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)

    def step(batch) -> None:
        img, mask, gm, oy, ox, _ = batch
        img, mask, gm, oy, ox = (t.to(device) for t in (img, mask, gm, oy, ox))
        heat, ry, rx = net(img)
        loss = ex_train.dice_loss(heat, gm) + ex_train.L1Loss(ry, oy, mask) + ex_train.L1Loss(rx, ox, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def runner(mode: str, protocol: str = "paper") -> Runner:
        kw = {"eps": 1.0} if mode == "sat" else {"delta": 1.0, "xi_rule": "mean+2std"} if mode == "amat" else {}
        r = Runner(AdvConfig(mode=mode, pgd_steps=args.pgd_steps, protocol=protocol, **kw), verbose=False,
                   heatmap_loss="dice")
        r.model = net
        r._optimizers.add(opt)
        return r

    def timed(r: Runner | None, loader: DataLoader, it: list) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with Patches(r) if r is not None else contextlib.nullcontext():
            batch = next(it[0], None) if it[0] is not None else None
            if batch is None:  # a new pass (its iterator made under this side's patches)
                it[0] = iter(loader)
                batch = next(it[0])
            step(batch)
        return time.perf_counter() - t0, time.process_time() - c0

    plain = DataLoader(ds, batch_size=args.batch_size, shuffle=True)
    for i in range(len(ds)):  # decode and cache the images first (the script's epoch 0)
        ds[i]
    out = ["", f"**In-process pairs** ({args.pairs} per comparison, alternating batch by batch - the order flips "
                f"every pair -, the example's network, data loader and loss under the runner's patches; per batch "
                f"of {args.batch_size}: wall-clock and process CPU seconds)", "",
           "| comparison | wall: median ratio (quartiles) | CPU: median ratio (quartiles) | median s / batch (wall) | pairs |",
           "|---|---|---|---|---|"]
    for a_name, b_name, a_mode, b_mode, protocol in (("AMAT", "SAT", "amat", "sat", "paper"),
                                                     ("AMAT-authors", "SAT-authors", "amat", "sat", "authors"),
                                                     ("amat run --adv none", "script alone", "none", None, "paper")):
        ra, rb = runner(a_mode, protocol), (runner(b_mode, protocol) if b_mode else None)
        with Patches(ra):  # a loader built under the patches (ids), shared by both sides
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True)
        ia, ib = [None], [None]
        loader_b = plain if rb is None else loader
        for _ in range(2):  # warm-up
            timed(ra, loader, ia), timed(rb, loader_b, ib)
        ta, tb, wall, cpu_r = [], [], [], []
        for k in range(args.pairs):
            loads.append(load())
            if k % 2 == 0:
                x, y = timed(ra, loader, ia), timed(rb, loader_b, ib)
            else:
                y, x = timed(rb, loader_b, ib), timed(ra, loader, ia)
            ta.append(x[0])
            tb.append(y[0])
            wall.append(x[0] / y[0])
            cpu_r.append(x[1] / y[1])
        out.append(f"| {a_name} / {b_name} | **{statistics.median(wall):.3f}** ({quantile(wall, 0.25):.3f}-"
                   f"{quantile(wall, 0.75):.3f}) | **{statistics.median(cpu_r):.3f}** ({quantile(cpu_r, 0.25):.3f}-"
                   f"{quantile(cpu_r, 0.75):.3f}) | {statistics.median(ta):.3f} / {statistics.median(tb):.3f} | "
                   f"{args.pairs} |")
        print(out[-1], flush=True)
    return out


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "unknown GPU"


if __name__ == "__main__":
    sys.exit(main())
