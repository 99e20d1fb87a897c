"""Classic YOLOv5 ``train.py`` (ultralytics/yolov5, unmodified) under ``amat run``: CPU seconds
per epoch of the script alone, ``amat run --adv none``, SAT and AMAT with the paper's protocol
and with the authors' (``--adv-protocol authors``), in one invocation (run by hand).

Every run is a real ``train.py`` process on a copy of the checkout (no ``.git``: the script's
git check would reach the network) and tiny generated data (``amat_hooks.zoo.detection_data``),
offline (a font is provided, as the tests do). The script is started through this file's
``--clock`` mode, which records the process's CPU time (``time.process_time``: every thread
of the process) at the script's own epoch callbacks (``on_train_epoch_start`` /
``on_train_epoch_end``) and then runs ``train.py`` unchanged; the plain run and the ``amat run``
runs go through the same clock. Rounds run every configuration once, the order reversed every
other round; epoch 0 (first-batch checks, caches) is not counted; ratios are medians of
per-round paired ratios. SAT and AMAT of one protocol run the same PGD steps (paper 10,
authors 20). Targets (issue 30): AMAT / SAT <= 1.03, ``--adv none`` / script alone <= 1.02;
(issue 27) AMAT-authors / SAT-authors <= 1.05.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_yolov5.py --checkout /work/yolov5 --out docs/perf_yolov5.md
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOCK = "[clock]"


def clock_main(argv: list[str]) -> None:
    """``--clock train.py ARGS``: run the checkout's ``train.py`` (in the working directory) as
    ``__main__`` with the CPU time of this process printed at its epoch callbacks."""
    import runpy

    script, args = argv[0], argv[1:]
    checkout = str(Path(script).resolve().parent)
    sys.path.insert(0, checkout)
    from utils.callbacks import Callbacks  # the checkout's; train.py imports the same module object

    run = Callbacks.run
    marks: dict[str, float] = {}

    def timed_run(self, hook, *a, **kw):
        if hook == "on_train_epoch_start":
            marks["start"], marks["wall"] = time.process_time(), time.perf_counter()
        elif hook == "on_train_epoch_end" and "start" in marks:
            print(f"{CLOCK} epoch {kw.get('epoch', -1)} train_cpu {time.process_time() - marks['start']:.4f} "
                  f"train_wall {time.perf_counter() - marks['wall']:.4f}", flush=True)
        elif hook == "on_model_save" and "start" in marks:  # after the epoch's validation and its torch.save
            print(f"{CLOCK} saved epoch_cpu {time.process_time() - marks['start']:.4f}", flush=True)
        return run(self, hook, *a, **kw)

    Callbacks.run = timed_run
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def parse_clock(stdout: str) -> tuple[list[float], list[float]]:
    """(training-loop CPU seconds per epoch, whole-epoch CPU seconds up to its checkpoint)."""
    train = [float(m) for m in re.findall(rf"^{re.escape(CLOCK)} epoch \d+ train_cpu ([\d.]+)", stdout, re.M)]
    full = [float(m) for m in re.findall(rf"^{re.escape(CLOCK)} saved epoch_cpu ([\d.]+)", stdout, re.M)]
    return train, full


def amat_command() -> list[str]:
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", default=os.environ.get("AMAT_YOLOV5_DIR", "/work/yolov5"),
                    help="a clone of ultralytics/yolov5 (default: $AMAT_YOLOV5_DIR)")
    ap.add_argument("--images", type=int, default=32, help="generated training images")
    ap.add_argument("--img", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the SAT and AMAT runs (epoch 0 is not counted)")
    ap.add_argument("--plain-epochs", type=int, default=8,
                    help="epochs of the script alone and --adv none runs (cheap ones: more epochs, steadier medians)")
    ap.add_argument("--cfg", default="yolov5n.yaml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="PGD steps for every SAT and AMAT (default: each "
                                                           "protocol's, paper 10, authors 20)")
    ap.add_argument("--sat-eps", type=float, default=1.0, help="L2 in [0, 1] image space")
    ap.add_argument("--amat-step", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated subset of the runs (smoke tests)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    args = ap.parse_args()
    if not (Path(args.checkout) / "train.py").is_file():
        raise SystemExit(f"no train.py in {args.checkout}: pass --checkout (git clone https://github.com/ultralytics/"
                         f"yolov5 && git -C yolov5 checkout 5081342f0)")
    sys.path.insert(0, str(REPO))
    from amat_hooks.offline import OFFLINE_ENV, provide_fonts
    from amat_hooks.zoo.detection_data import make_dataset
    from bench.common import children_cpu, load, machine, order, paired, spread, verdict

    commit = _commit(Path(args.checkout))
    t_start, c_start, load0 = time.time(), children_cpu(), load()
    tmp = Path(tempfile.mkdtemp(prefix="bench_yolov5_"))
    checkout = tmp / "yolov5"
    shutil.copytree(args.checkout, checkout, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__"))
    data = make_dataset(tmp / "data", n_train=args.images, n_val=4, size=args.img, seed=0)
    fonts = tmp / "fonts"
    provide_fonts(fonts)
    env = {**os.environ, **OFFLINE_ENV, "YOLOV5_CONFIG_DIR": str(fonts), "YOLOv5_AUTOINSTALL": "false",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    clock = ["python", str(Path(__file__).resolve()), "--clock", "train.py"]
    amat = amat_command()
    steps = ["--adv-steps", str(args.steps)] if args.steps else []
    sat = ["run", "--adv", "sat", "--adv-eps", f"{args.sat_eps:g}", *steps]
    am = ["run", "--adv", "amat", "--adv-step", f"{args.amat_step:g}", "--adv-xi-rule", "mean+2std", *steps]
    authors = ["--adv-protocol", "authors"]
    runs = {
        "script alone": [sys.executable, *clock[1:]],
        "amat run --adv none": amat + ["run", "--adv", "none", "--", *clock],
        "SAT": amat + sat + ["--", *clock],
        "AMAT": amat + am + ["--", *clock],
        "SAT-authors": amat + sat + authors + ["--", *clock],
        "AMAT-authors": amat + am + authors + ["--", *clock],
    }
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        runs = {k: v for k, v in runs.items() if k in keep}
    train_args = ["--data", str(data), "--cfg", args.cfg, "--weights", "", "--img", str(args.img), "--batch",
                  str(args.batch), "--workers", "0", "--device", "cpu", "--noplots", "--noval", "--exist-ok",
                  "--project", str(tmp / "runs")]
    epochs = {n: args.plain_epochs if n in ("script alone", "amat run --adv none") else args.epochs for n in runs}
    train: dict[str, list[float]] = {n: [] for n in runs}   # per round: median over the counted epochs
    full: dict[str, list[float]] = {n: [] for n in runs}
    total: dict[str, list[float]] = {n: [] for n in runs}   # whole process (getrusage of the child)
    notes: dict[str, str] = {}
    loads = []
    for rnd in range(args.rounds):
        for name in order(list(runs), rnd):
            loads.append(load())
            c0 = children_cpu()
            r = subprocess.run(runs[name] + train_args + ["--epochs", str(epochs[name]), "--name",
                                                          re.sub(r"[^A-Za-z0-9]+", "_", name)],
                               capture_output=True, text=True, cwd=checkout, env=env)
            spent = children_cpu() - c0
            if r.returncode != 0:
                print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed (exit {r.returncode})")
            t, f = parse_clock(r.stdout)
            if len(t) != epochs[name]:
                raise SystemExit(f"{name}: {len(t)} epoch clock lines for {epochs[name]} epochs:\n{r.stdout[-2000:]}")
            train[name].append(statistics.median(t[1:]))
            full[name].append(statistics.median(f[1:-1]) if len(f) > 2 else float("nan"))  # not the last: it validates
            total[name].append(spent)
            if name not in notes:
                adapter = next((ln for ln in r.stdout.splitlines() if "[amat] adapter:" in ln), "")
                n_lines = sum(1 for ln in r.stdout.splitlines() if ln.startswith("[amat] epoch"))
                notes[name] = f"{adapter.strip()} ({n_lines} `[amat] epoch` lines)" if adapter else ""
            print(f"round {rnd} {name}: train CPU/epoch " + ", ".join(f"{v:.3f}" for v in t[1:])
                  + f"; whole epoch {', '.join(f'{v:.3f}' for v in f[1:])}; process {spent:.1f} s", flush=True)
    minutes = (time.time() - t_start) / 60
    cpu_min = (children_cpu() - c_start) / 60
    cmd = (f"OMP_NUM_THREADS={args.threads} .venv/bin/python bench/bench_yolov5.py --checkout {args.checkout} "
           f"--images {args.images} --img {args.img} --batch {args.batch} --epochs {args.epochs} "
           f"--plain-epochs {args.plain_epochs} --rounds {args.rounds}"
           + (f" --steps {args.steps}" if args.steps else "") + (f" --out {args.out}" if args.out else ""))
    lines = [
        "# Classic YOLOv5 `train.py` under `amat run`: CPU seconds per epoch",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/bench_yolov5.py` on {machine(args.threads)}; CPU only.",
        f"ultralytics/yolov5 at commit {commit} (a copy without `.git`), `python train.py --cfg {args.cfg} --weights '' "
        f"--img {args.img} --batch {args.batch} --workers 0 --device cpu --noval --noplots` on "
        f"{args.images} generated training images ({args.images // args.batch} batches per epoch), offline; "
        f"`--epochs {args.epochs}` for SAT and AMAT, `--epochs {args.plain_epochs}` for the script alone and "
        f"`--adv none`. "
        f"{args.rounds} rounds, each running every configuration once as its own process (order reversed every "
        f"other round); per run the median over epochs 1 to the last (epoch 0 not counted) of the process's "
        f"CPU seconds (all threads) in the script's training loop (`on_train_epoch_start` -> `on_train_epoch_end`), "
        f"and over epochs 1 to the last but one of the whole epoch up to its checkpoint (`on_model_save`: after the "
        f"scheduler, EMA, the save, and the runner's sidecar; the last epoch, which validates, is left out); ratios are medians of per-round paired ratios. SAT eps {args.sat_eps:g}, AMAT Delta "
        f"{args.amat_step:g} (L2 in [0, 1] image space), xi online (mean + 2 std; the authors' runs use their "
        f"published preset `authors:yolov5`, box/obj/cls). Paper: 10 PGD steps of 2.5 E / 10; authors: 20 steps "
        f"of 5 E / 20, start on the sphere, acceptance at every iterate, per-epoch margin updates with the Delta "
        f"floor, PGD forwards in train mode.",
        f"1-minute load average: {statistics.mean(loads):.1f} mean ({min(loads):.1f}-{max(loads):.1f}) before the "
        f"runs, {load0:.1f} at the start; {minutes:.1f} min wall, {cpu_min:.1f} min CPU in all.",
        "",
        f"Command: `{cmd}`",
        "",
        "| run | training loop CPU s / epoch (median of rounds) | whole epoch | process CPU s | per round (training loop) |",
        "|---|---|---|---|---|",
    ]
    for name in runs:
        lines.append(f"| {name} | {statistics.median(train[name]):.3f} | {statistics.median(full[name]):.3f} | "
                     f"{statistics.median(total[name]):.1f} | " + ", ".join(f"{v:.3f}" for v in train[name]) + " |")
    targets = [("AMAT", "SAT", 1.03, "issue 30"), ("amat run --adv none", "script alone", 1.02, "issue 30"),
               ("AMAT-authors", "SAT-authors", 1.05, "issue 27")]
    lines += ["", "| ratio (median of per-round paired ratios) | training loop (quartiles) | whole epoch | target | "
                  "verdict (training loop) | per round (training loop) |", "|---|---|---|---|---|---|"]
    result = {}
    for a, b, target, issue in targets:
        if a not in runs or b not in runs:
            continue
        pt, rt = paired(train[a], train[b])
        pf, _ = paired(full[a], full[b])
        result[f"{a} / {b}"] = {"train": pt, "full": pf, "rounds": rt}
        lines.append(f"| {a} / {b} ({issue}) | **{pt:.3f}** ({spread(rt)}) | {pf:.3f} | <= {target} | "
                     f"{verdict(pt, target)} | "
                     + ", ".join(f"{v:.3f}" for v in rt) + " |")
    lines += ["", "What each `amat run` said about its adapter: "
              + "; ".join(f"{k}: {v}" for k, v in notes.items() if v) + ".", "",
              "Raw (per round): " + json.dumps({"train": train, "full": full, "process": total})]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h (%cs)"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git metadata)"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--clock":
        clock_main(sys.argv[2:])
    else:
        sys.exit(main())
