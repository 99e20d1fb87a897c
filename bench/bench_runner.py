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
import contextlib
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
    """Wall-clock seconds of each training epoch, as the script prints them."""
    return [float(m) for m in re.findall(r"^Epoch \d+ train rows \d+ .*\(([\d.]+) s\)", stdout, re.M)]


def epoch_cpu(stdout: str) -> list[float]:
    """Process CPU seconds (all threads) of each training epoch."""
    return [float(m) for m in re.findall(r"^Epoch \d+ train rows \d+ .*\) cpu ([\d.]+) s$", stdout, re.M)]


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
    ap.add_argument("--rounds", type=int, default=3, help="alternating repetitions of all runs (0: none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads in every run (OMP_NUM_THREADS / torch.set_num_threads); on a "
                         "shared, loaded CPU 1 avoids oversubscription and spinning, which make wall times "
                         "swing by several x")
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
    cpu: dict[str, list[list[float]]] = {name: [] for name in runs}
    loads: list[float] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(REPO))
        from amat_hooks.zoo.isbi import write_generated_isbi

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
                t, c = epoch_times(r.stdout)[1:], epoch_cpu(r.stdout)[1:]
                times[name].append(t)
                cpu[name].append(c)
                print(f"round {rnd} {name}: " + ", ".join(f"{v:.2f}" for v in t) + " s/epoch (cpu "
                      + ", ".join(f"{v:.2f}" for v in c) + f"), wall {wall:.0f} s, load {load}", flush=True)
        pair_lines = in_process_pairs(args, data, loads) if args.pairs else []
    minutes = (time.time() - t_start) / 60
    base = "script alone"
    dev = args.device if args.device == "cpu" else f"{args.device} ({_gpu_name()})"
    load_text = (f"1-minute load average before the runs: mean {statistics.mean(loads):.1f}, min {min(loads):.1f}, "
                 f"max {max(loads):.1f} on {os.cpu_count()} cores" if loads else "load average not available")
    lines = [
        f"`bench/bench_runner.py --device {args.device} --size {args.size[0]} {args.size[1]} --images {args.images} "
        f"--batch-size {args.batch_size} --pgd-steps {args.pgd_steps} --rounds {args.rounds}"
        + (f" --pairs {args.pairs}" if args.pairs else "") + (f" --threads {args.threads}" if args.threads else "")
        + (" --joint" if args.joint else "") + f"`: {args.images} generated images at "
        f"{args.size[0]}x{args.size[1]}, {args.landmarks} landmarks, batch {args.batch_size}, {args.epochs} epochs "
        f"per run (epoch 0 not counted), {args.rounds} alternating rounds, {dev}, {platform.machine()}, "
        f"{args.threads or 'default'} torch thread(s), "
        f"{minutes:.0f} min in all. {load_text}.",
    ]
    for label, data in (("wall-clock seconds per epoch", times), ("process CPU seconds per epoch (all threads)", cpu)):
        if not args.rounds or not all(data[name] and all(data[name]) for name in runs):
            continue
        per_round = {name: [statistics.median(t) for t in ts] for name, ts in data.items()}
        best = {name: min(v for t in ts for v in t) for name, ts in data.items()}

        def paired(a: str, b: str, per_round=per_round) -> tuple[float, list[float]]:
            ratios = [x / y for x, y in zip(per_round[a], per_round[b])]
            return statistics.median(ratios), ratios

        lines += ["", f"**{label}**", "",
                  "| run | median of rounds | min | x script alone | per round |", "|---|---|---|---|---|"]
        for name in runs:
            med = statistics.median(per_round[name])
            lines.append(f"| {name} | {med:.2f} | {best[name]:.2f} | {med / statistics.median(per_round[base]):.2f} | "
                         + ", ".join(f"{v:.2f}" for v in per_round[name]) + " |")
        amat_ratio, amat_rounds = paired("AMAT", "SAT")
        none_ratio, none_rounds = paired("amat run --adv none", base)
        lines += [
            "",
            f"AMAT / SAT, paired by round: **{amat_ratio:.3f}** (rounds: "
            f"{', '.join(f'{v:.3f}' for v in amat_rounds)}; ratio of the minima {best['AMAT'] / best['SAT']:.3f}).",
            f"`amat run --adv none` / script alone, paired by round: **{none_ratio:.3f}** (rounds: "
            f"{', '.join(f'{v:.3f}' for v in none_rounds)}; ratio of the minima "
            f"{best['amat run --adv none'] / best[base]:.3f}).",
        ]
        if args.joint:
            for mode in ("SAT", "AMAT"):
                r, rr = paired(mode, f"{mode}, --adv-batch joint")
                lines.append(f"{mode}: two forward passes / one joint pass, paired: **{r:.3f}** "
                             f"(rounds: {', '.join(f'{v:.3f}' for v in rr)}).")
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

    def runner(mode: str) -> Runner:
        kw = {"eps": 1.0} if mode == "sat" else {"delta": 1.0, "xi_rule": "mean+2std"} if mode == "amat" else {}
        r = Runner(AdvConfig(mode=mode, pgd_steps=args.pgd_steps, **kw), verbose=False, heatmap_loss="dice")
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
    for a_name, b_name, a_mode, b_mode in (("AMAT", "SAT", "amat", "sat"),
                                           ("amat run --adv none", "script alone", "none", None)):
        ra, rb = runner(a_mode), (runner(b_mode) if b_mode else None)
        with Patches(ra):  # a loader built under the patches (ids), shared by both sides
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True)
        ia, ib = [None], [None]
        loader_b = plain if rb is None else loader
        for _ in range(2):  # warm-up
            timed(ra, loader, ia), timed(rb, loader_b, ib)
        ta, tb, wall, cpu_r = [], [], [], []
        for k in range(args.pairs):
            load = load_average()
            if load is not None:
                loads.append(load)
            if k % 2 == 0:
                x, y = timed(ra, loader, ia), timed(rb, loader_b, ib)
            else:
                y, x = timed(rb, loader_b, ib), timed(ra, loader, ia)
            ta.append(x[0])
            tb.append(y[0])
            wall.append(x[0] / y[0])
            cpu_r.append(x[1] / y[1])
        out.append(f"| {a_name} / {b_name} | **{statistics.median(wall):.3f}** ({_quantile(wall, 0.25):.3f}-"
                   f"{_quantile(wall, 0.75):.3f}) | **{statistics.median(cpu_r):.3f}** ({_quantile(cpu_r, 0.25):.3f}-"
                   f"{_quantile(cpu_r, 0.75):.3f}) | {statistics.median(ta):.3f} / {statistics.median(tb):.3f} | "
                   f"{args.pairs} |")
        print(out[-1], flush=True)
    return out


def _quantile(v: list[float], q: float) -> float:
    s = sorted(v)
    i = q * (len(s) - 1)
    lo = int(i)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (i - lo)


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "unknown GPU"


if __name__ == "__main__":
    sys.exit(main())
