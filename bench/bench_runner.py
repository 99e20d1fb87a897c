"""Benchmark of `amat run` on the example Multi-Task U-Net script (run by hand).

Times the script's own training epochs (the "(T s)" it prints per epoch) for: the script
alone, `amat run --adv none` (the runner's overhead), SAT and AMAT with the same PGD steps
(the paper: AMAT costs about what SAT costs), both with the runner's default of two
separate forward passes for the clean and the noisy rows (``--joint`` adds SAT and AMAT with
``--adv-batch joint``, one forward of 2B rows). All runs in one invocation, on generated
ISBI-layout data, in alternating rounds (each round runs every configuration once, the
order reversed every other round), so load from other processes hits all alike; the
ratios are formed per round (paired) and their median is reported, next to the ratio of
the per-configuration minima. The 1-minute load average is read before every run.

    .venv/bin/python bench/bench_runner.py --rounds 4 --write docs/perf_runner.md
    python3 bench/bench_runner.py --device cuda --size 200 160 --images 16 --batch-size 8 --pgd-steps 10
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "landmark" / "train.py"


def epoch_times(stdout: str) -> list[float]:
    return [float(m) for m in re.findall(r"^Epoch \d+ train rows \d+ .*\(([\d.]+) s\)$", stdout, re.M)]


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def amat_command() -> list[str]:
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[64, 48])
    ap.add_argument("--landmarks", type=int, default=19)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="epoch 0 is warm-up (image caching) and not counted")
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating repetitions of all runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--joint", action="store_true", help="also time SAT and AMAT with --adv-batch joint")
    ap.add_argument("--write", default=None, help="markdown file for the results")
    args = ap.parse_args()

    amat = amat_command()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    steps = ["--adv-steps", str(args.pgd_steps)]
    sat = ["run", "--adv", "sat", "--adv-eps", "1", *steps]
    am = ["run", "--adv", "amat", "--adv-step", "1", "--adv-xi-rule", "mean+2std", *steps]
    script = ["--", "python", str(SCRIPT)]
    runs = {
        "script alone": [sys.executable, str(SCRIPT)],
        "amat run --adv none": amat + ["run", "--adv", "none", *script],
        "SAT": amat + sat + script,
        "AMAT": amat + am + script,
    }
    if args.joint:
        runs["SAT, --adv-batch joint"] = amat + sat + ["--adv-batch", "joint"] + script
        runs["AMAT, --adv-batch joint"] = amat + am + ["--adv-batch", "joint"] + script
    times: dict[str, list[list[float]]] = {name: [] for name in runs}
    loads: list[float] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(REPO))
        from amat_hooks.integrations.multitask_unet.data import write_generated_isbi

        data = write_generated_isbi(tmp / "data", n=args.images + 2, height=2 * args.size[0],
                                    width=2 * args.size[1], num_landmarks=args.landmarks, seed=0)
        common = ["--data", str(data), "--train-ids", f"1-{args.images}", "--val-ids", f"{args.images + 1}",
                  "--size", *map(str, args.size), "--num-landmarks", str(args.landmarks), "--batch-size",
                  str(args.batch_size), "--epochs", str(args.epochs), "--save-every", "1000",
                  "--heatmap-loss", "dice", "--device", args.device]
        names = list(runs)
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                out = tmp / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}_{rnd}"
                load = load_average()
                if load is not None:
                    loads.append(load)
                t0 = time.perf_counter()
                r = subprocess.run(runs[name] + common + ["--out", str(out)], capture_output=True, text=True,
                                   cwd=tmp, env=env)
                wall = time.perf_counter() - t0
                if r.returncode != 0:
                    print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{name} failed")
                t = epoch_times(r.stdout)[1:]
                times[name].append(t)
                print(f"round {rnd} {name}: " + ", ".join(f"{v:.2f}" for v in t)
                      + f" s/epoch, wall {wall:.0f} s, load {load}", flush=True)
    minutes = (time.time() - t_start) / 60
    per_round = {name: [statistics.median(t) for t in ts] for name, ts in times.items()}
    best = {name: min(v for t in ts for v in t) for name, ts in times.items()}
    base = "script alone"

    def paired(a: str, b: str) -> tuple[float, list[float]]:
        ratios = [x / y for x, y in zip(per_round[a], per_round[b])]
        return statistics.median(ratios), ratios

    none_ratio, none_rounds = paired("amat run --adv none", base)
    amat_ratio, amat_rounds = paired("AMAT", "SAT")
    dev = args.device if args.device == "cpu" else f"{args.device} ({_gpu_name()})"
    load_text = (f"1-minute load average before the runs: mean {statistics.mean(loads):.1f}, min {min(loads):.1f}, "
                 f"max {max(loads):.1f} on {os.cpu_count()} cores" if loads else "load average not available")
    lines = [
        f"`bench/bench_runner.py --device {args.device} --size {args.size[0]} {args.size[1]} --images {args.images} "
        f"--batch-size {args.batch_size} --pgd-steps {args.pgd_steps} --rounds {args.rounds}"
        + (" --joint" if args.joint else "") + f"`: {args.images} generated images at "
        f"{args.size[0]}x{args.size[1]}, {args.landmarks} landmarks, batch {args.batch_size}, {args.epochs} epochs "
        f"per run (epoch 0 not counted), {args.rounds} alternating rounds, {dev}, {platform.machine()}, "
        f"{minutes:.0f} min in all. {load_text}.",
        "",
        "| run | s / epoch, median of rounds | min | x script alone (median) | per round |",
        "|---|---|---|---|---|",
    ]
    for name in runs:
        med = statistics.median(per_round[name])
        lines.append(f"| {name} | {med:.3f} | {best[name]:.3f} | "
                     f"{med / statistics.median(per_round[base]):.2f} | "
                     + ", ".join(f"{v:.3f}" for v in per_round[name]) + " |")
    lines += [
        "",
        f"AMAT / SAT, paired by round: **{amat_ratio:.3f}** (rounds: {', '.join(f'{v:.3f}' for v in amat_rounds)}; "
        f"ratio of the minima {best['AMAT'] / best['SAT']:.3f}).",
        f"`amat run --adv none` / script alone, paired by round: **{none_ratio:.3f}** (rounds: "
        f"{', '.join(f'{v:.3f}' for v in none_rounds)}; ratio of the minima "
        f"{best['amat run --adv none'] / best[base]:.3f}).",
    ]
    if args.joint:
        for mode in ("SAT", "AMAT"):
            r, rr = paired(mode, f"{mode}, --adv-batch joint")
            lines.append(f"{mode}: two forward passes / one joint pass, paired: **{r:.3f}** "
                         f"(rounds: {', '.join(f'{v:.3f}' for v in rr)}).")
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n", encoding="utf-8")
    return 0


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "unknown GPU"


if __name__ == "__main__":
    sys.exit(main())
