"""``amat demo --backend nnunet``: STD, SAT and AMAT with the REAL nnU-Net trainer on
generated data, evaluated with the core's L2 PGD / 10-step IFGSM. While a stage trains,
one line per nnU-Net epoch (train loss, AMAT margins, epoch time, ETA) is echoed from the
trainer's output; everything else goes to the log.

Every step is what a user would type: ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train ... -tr nnUNetTrainerSTD|SAT|AMAT``, ``amat calibrate nnunet`` (xi from the
clean model, paper section 2.2) and the evaluation behind ``amat eval nnunet``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 997
DATASET = f"Dataset{DATASET_ID:03d}_AMATDemo"


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAT_", "nnUNet_"))}
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0",
               nnUNet_compile="false", MPLBACKEND="Agg")
    env.update(extra)
    return env


class EpochEcho:
    """Turns nnU-Net's console lines ("<time>: Epoch 3", "train_loss -0.41", "AMAT margins
    n=.. mean=..", "Epoch time: 5.2 s") into one progress line per epoch."""

    _EPOCH = re.compile(r": Epoch (\d+)\s*$")
    _LOSS = re.compile(r": train_loss (\S+)")
    _MARGIN = re.compile(r": AMAT margins n=\d+ mean=([^\s,]+) .*max=([^\s,]+)")
    _TIME = re.compile(r": Epoch time: (\S+) s")

    def __init__(self, label: str, epochs: int, write=print) -> None:
        self.label, self.epochs, self.write = label, epochs, write
        self.epoch, self.loss, self.margin, self.times = None, None, None, []

    def feed(self, line: str) -> None:
        if m := self._EPOCH.search(line):
            self.epoch, self.loss, self.margin = int(m.group(1)), None, None
        elif m := self._LOSS.search(line):
            self.loss = m.group(1)
        elif m := self._MARGIN.search(line):
            self.margin = (m.group(1), m.group(2))
        elif (m := self._TIME.search(line)) and self.epoch is not None:
            try:
                self.times.append(float(m.group(1)))
            except ValueError:
                return
            k = self.epoch + 1
            per = sum(self.times) / len(self.times)
            left = max(0, self.epochs - k) * per
            margin = f", margin mean {self.margin[0]} (max {self.margin[1]})" if self.margin else ""
            self.write(f"      [{self.label}] epoch {k}/{self.epochs}: train loss {self.loss}{margin}, "
                       f"{per:.1f} s/epoch, ETA {self.label} {int(left) // 60}:{int(left) % 60:02d}", flush=True)


def _run(cmd: list[str], env: dict[str, str], log: Path, what: str, echo: EpochEcho | None = None) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        if echo is None:
            p = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
            rc = p.returncode
        else:
            with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=1) as p:
                for line in p.stdout:
                    f.write(line)
                    f.flush()
                    echo.feed(line)
            rc = p.returncode
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def make_demo_dataset(raw: Path, train_cases: int, test_cases: int, slices: int, size: int, seed: int) -> Path:
    """Generated training cases in imagesTr and separate test cases in imagesTs/labelsTs."""
    from amat_hooks.zoo.nnunet_data import make_generated_dataset

    folder = make_generated_dataset(raw, DATASET_ID, "AMATDemo", cases=train_cases, slices=slices, size=size,
                                    seed=seed)
    tmp = make_generated_dataset(raw / "_test", DATASET_ID, "AMATDemo", cases=test_cases, slices=slices,
                                 size=size, seed=seed + 1000)
    for src, dst in (("imagesTr", "imagesTs"), ("labelsTr", "labelsTs")):
        (folder / dst).mkdir(exist_ok=True)
        for f in sorted((tmp / src).iterdir()):
            shutil.move(str(f), folder / dst / f.name.replace("shapes_", "test_"))
    shutil.rmtree(raw / "_test")
    return folder


def run_nnunet_demo(args: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "demo.log"
    bindir = Path(sys.executable).parent
    env = _env(root)
    epochs = args.epochs or 8
    from amat_hooks.policy_types import TRAIN_REFINE_STEPS

    iters, steps, refine, sat_eps, delta = 20, 5, TRAIN_REFINE_STEPS, 4.0, 1.0
    levels = [2.0, 4.0, 8.0]
    pgd_steps = args.pgd_steps or 20
    print(f"amat demo (nnU-Net): work folder {root}, log {log}")
    print(f"  budget per method: {epochs} epochs x {iters} iterations, PGD {steps} steps; "
          f"SAT eps={sat_eps:g}; AMAT Delta={delta:g}, {refine} bisection steps, xi = mean clean loss of the "
          f"STD model; evaluation: {pgd_steps}-step PGD and 10-step IFGSM at L2 levels {levels}")
    if not (root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        print("[1/6] generating data and running nnUNetv2_plan_and_preprocess ...", flush=True)
        make_demo_dataset(root / "nnUNet_raw", 16, 4, 8, 32, args.seed)
        _run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"],
             {**env, "nnUNet_n_proc_DA": "1"}, log, "nnUNetv2_plan_and_preprocess")
    timing: dict[str, float] = {}
    runs = [("STD", "nnUNetTrainerSTD", {}),
            (f"SAT{sat_eps:g}", "nnUNetTrainerSAT", {"AMAT_EPS": str(sat_eps)}),
            ("AMAT", "nnUNetTrainerAMAT", {"AMAT_STEP": str(delta), "AMAT_XI_SOURCE": "file"})]
    amat = str(bindir / "amat")
    for i, (label, trainer, extra) in enumerate(runs):
        res_root = root / "runs" / label
        fold = res_root / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0"
        step_no = {0: 2, 1: 3, 2: 5}[i]
        if (fold / "checkpoint_final.pth").is_file():
            print(f"[{step_no}/6] {label}: already trained ({fold})")
            continue
        if label == "AMAT":
            print("[4/6] amat calibrate nnunet: xi from the STD model's clean slice losses ...", flush=True)
            _run([amat, "calibrate", "nnunet", str(DATASET_ID), "2d", "0", "-tr", "nnUNetTrainerSTD"],
                 _env(root, nnUNet_results=str(root / "runs" / "STD")), log, "amat calibrate nnunet")
        print(f"[{step_no}/6] nnUNetv2_train {DATASET_ID} 2d 0 -tr {trainer} -device cpu ({label}) ...", flush=True)
        e = _env(root, nnUNet_results=str(res_root), AMAT_EPOCHS=str(epochs), AMAT_ITERS=str(iters),
                 AMAT_VAL_ITERS="1", AMAT_STEPS=str(steps), AMAT_REFINE_STEPS=str(refine), **extra)
        timing[label] = _run([str(bindir / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer,
                              "-device", "cpu"], {**e, "PYTHONUNBUFFERED": "1"}, log, f"nnUNetv2_train {trainer}",
                             echo=EpochEcho(label, epochs))
        print(f"      done in {timing[label]:.0f} s", flush=True)
    print("[6/6] amat eval nnunet on the generated test cases ...", flush=True)
    models = ",".join(f"{label}={trainer}@{root / 'runs' / label}" for label, trainer, _ in runs)
    cmd = [amat, "eval", "nnunet", str(DATASET_ID), "2d", "0", "--split", "test", "--models", models,
           "--levels", ",".join(f"{v:g}" for v in levels), "--pgd-steps", str(pgd_steps),
           "--batch-size", "64", "--out", str(root / "report"), "--name", "demo", "--resume",
           "--seed", str(args.seed)]
    p = subprocess.run(cmd, env=env)
    if p.returncode != 0:
        print(f"amat eval nnunet failed (exit {p.returncode})", file=sys.stderr)
        return p.returncode
    from amat_hooks.evaluation import load_result, warn_if_weak

    results = {label: load_result(root / "report" / "models" / f"{label}.json") for label, _, _ in runs}
    if timing:
        print("\ntraining wall time per method (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    for note in warn_if_weak(results):
        print(note)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0
