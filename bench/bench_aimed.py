"""Attacks aimed at the landmark metric vs the training loss (issue 32), run by hand; writes
the section "Attacks aimed at the metric: landmarks" of docs/evaluation.md.

1. Data: ``--data isbi`` (default where present): the ISBI 2015 radiographs of
   ``../shared/data/isbi2015_ceph`` (the issue's data; train 1-150, test from 201), or
   ``--data generated``: ISBI-like radiographs (``zoo.isbi_writers.write_generated_isbi``: 240x192, 19
   landmarks; train 1-48, test from 65; easy: a model barely moves at these levels).
2. Model: one STD Multi-Task U-Net trained by the unmodified example script through
   ``amat run --adv none -- python examples/landmark/train.py`` (skipped when its checkpoint exists).
3. Evaluation (``amat eval landmark``'s task and core) at the L2 levels: ONE evaluation with
   ``--attacks pgd,ifgsm,worst`` (which adds the aimed ``heatmap`` and ``vote``) on ``--test``
   images gives the rows PGD, worst of PGD + IFGSM (recomputed per sample from the kept
   statistics: round 2's worst), each aimed attack, and the new worst. Cost: on the first
   ``--ratio-images`` of them, the same combined evaluation and then the four attacks one
   evaluation each, back to back in this run: their numbers must equal the combined run's, and the
   ratio (combined / one after another, CPU time) should be <= 1.0.

Timed in process CPU seconds, one torch thread (the CPU is shared). Budget at the defaults
(64x48, 30 epochs, 12 + 4 test images): ~15 min of CPU.

    python bench/bench_aimed.py [--out runs/bench_aimed] [--write docs/evaluation.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amat_hooks.evaluation import robustness_eval  # noqa: E402
from amat_hooks.integrations.multitask_unet.task import LandmarkEvalTask, load_model  # noqa: E402
from amat_hooks.zoo.isbi_dataset import LandmarkDataset
from amat_hooks.zoo.isbi_writers import write_generated_isbi  # noqa: E402

ISBI = ROOT.parent / "shared" / "data" / "isbi2015_ceph"
BEGIN, END = "<!-- bench_aimed: begin -->", "<!-- bench_aimed: end -->"
AIMED = ("heatmap", "vote")


def amat() -> list[str]:
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


def train(a, data: Path, out: Path, ids: list[str]) -> Path:
    ckpt = out / f"model_epoch_{a.epochs - 1}.pth"
    if ckpt.is_file():
        print(f"model: {ckpt} (exists)", flush=True)
        return ckpt
    cmd = amat() + ["run", "--adv", "none", "--heatmap-loss", "dice", "--", sys.executable,
                    str(ROOT / "examples" / "landmark" / "train.py"), "--data", str(data), "--heatmap-loss", "dice",
                    "--size", str(a.size[0]), str(a.size[1]), *ids,
                    "--epochs", str(a.epochs), "--save-every", str(a.epochs), "--batch-size", "8", "--device", "cpu",
                    "--seed", "0", "--out", str(out)]
    print("training:", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out / "train.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "train.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0 or not ckpt.is_file():
        raise SystemExit(f"training failed ({r.returncode}); see {out / 'train.log'}")
    print(f"trained in {time.perf_counter() - t0:.0f} s wall", flush=True)
    return ckpt


def worst_over(task, r, attacks, level) -> float:
    """MRE of the per-sample worst case over ``attacks`` at ``level``, from the kept statistics."""
    key = f"{level:g}"
    stats = r.per_sample["stats"]
    scores = {at: r.per_sample["scores"][at][key] for at in attacks}
    chosen = [stats[max(attacks, key=lambda at: scores[at][i])][key][i] for i in range(len(scores[attacks[0]]))]
    return float(task.reduce([chosen])["MRE"])


def timed(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_aimed"))
    ap.add_argument("--size", type=int, nargs=2, default=[64, 48], metavar=("H", "W"))
    ap.add_argument("--data", choices=("isbi", "generated"), default="isbi" if ISBI.is_dir() else "generated")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--test", type=int, default=12, help="test images (the first of the test split)")
    ap.add_argument("--ratio-images", type=int, default=4, help="test images of the cost measurement")
    ap.add_argument("--levels", default="0.5,1,2,4,8")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--ifgsm-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", default=str(ROOT / "docs" / "evaluation.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    if a.data == "isbi":
        data, ids = ISBI, ["--train-ids", "1-150", "--val-ids", "151-200"]
    else:
        data, ids = out / "data", ["--train-ids", "1-48", "--val-ids", "49-64"]
        if not (data / "dataset").exists():
            write_generated_isbi(data, n=80, seed=0)
    ckpt = train(a, data, out / f"std_{a.data}", ids)
    model = load_model(ckpt)
    size = (a.size[0], a.size[1])

    def task_of(n: int) -> LandmarkEvalTask:
        ds = LandmarkDataset(data, "test", size=size, num_landmarks=model.num_landmarks, max_images=n,
                             channels=int(model.vgg.features[0].in_channels))
        return LandmarkEvalTask(model, ds, batch_size=4, heatmap_loss="dice")

    task = task_of(a.test)
    levels = [float(v) for v in a.levels.split(",")]
    kw = dict(pgd_steps=a.pgd_steps, ifgsm_steps=a.ifgsm_steps, progress=False)
    both = ("pgd", "ifgsm", "worst")
    print(f"table: {','.join(both)} on {len(task.dataset)} images at {levels} ...", flush=True)
    r, c = timed(lambda: robustness_eval(task, levels, attacks=both, **kw))
    print(f"  {c:.0f} s CPU; worst over {r.worst_of}", flush=True)
    small = task_of(a.ratio_images)
    print(f"cost on {len(small.dataset)} images: combined ...", flush=True)
    rs, cpu_combined = timed(lambda: robustness_eval(small, levels, attacks=both, **kw))
    cpu_separate, same = 0.0, True
    for at in rs.worst_of:
        print(f"  separate: {at} ...", flush=True)
        single, c = timed(lambda at=at: robustness_eval(small, levels, attacks=(at,), **kw))
        cpu_separate += c
        same &= all(abs(single.noisy[at][lv]["MRE"] - rs.noisy[at][lv]["MRE"]) < 1e-9 for lv in levels)
    ratio = cpu_combined / cpu_separate
    print(f"  combined {cpu_combined:.0f} s, separate {cpu_separate:.0f} s CPU: ratio {ratio:.3f}", flush=True)
    rows = [
        (f"`amat eval landmark`, {a.pgd_steps}-step PGD (training loss)", r.curve("pgd")),
        (f"worst of PGD and {a.ifgsm_steps}-step IFGSM (round 2's worst)",
         [worst_over(task, r, ["pgd", "ifgsm"], lv) for lv in levels]),
        (f"`heatmap`, {a.pgd_steps}-step PGD aimed at the location", r.curve("heatmap")),
        (f"`vote`, {a.pgd_steps}-step PGD aimed at the location", r.curve("vote")),
        ("**`worst` now** (PGD, IFGSM, heatmap, vote)", r.curve("worst")),
    ]
    src = {f"{lv:g}": {k: v for k, v in _count(r.per_sample["worst_from"][f"{lv:g}"]).items()} for lv in levels}
    record = {"levels": levels, "clean": r.clean["MRE"], "rows": rows, "cpu_combined": cpu_combined,
              "cpu_separate": cpu_separate, "ratio": ratio, "same_numbers": same, "worst_from": src,
              "images": len(task.dataset), "ratio_images": len(small.dataset), "size": list(size),
              "epochs": a.epochs, "checkpoint": str(ckpt), "data": a.data}
    (out / f"result_{a.data}.json").write_text(json.dumps(record, indent=1))
    text = render(a, record)
    print(text)
    if a.write:
        write_section(Path(a.write), text)
        print(f"written: {a.write}")


def _count(names) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out


def render(a, rec) -> str:
    lv = rec["levels"]
    head = "| L2 level | " + " | ".join(f"{v:g}" for v in lv) + " |\n|---|" + "---|" * len(lv) + "\n"
    body = "".join(f"| {name} (MRE mm) | " + " | ".join(f"{v:.2f}" for v in vals) + " |\n" for name, vals in rec["rows"])
    src = "| worst taken from | " + " | ".join(
        ", ".join(f"{k} {n}" for k, n in sorted(rec["worst_from"][f"{v:g}"].items(), key=lambda kv: -kv[1]))
        for v in lv) + " |\n"
    h, w = rec["size"]
    what = ("the ISBI 2015 radiographs of ../shared/data/isbi2015_ceph, images 1-150" if rec["data"] == "isbi"
            else "generated radiographs (zoo.isbi_writers.write_generated_isbi), images 1-48")
    return (f"{BEGIN}\nMeasured by `python bench/bench_aimed.py --data {rec['data']}`: one STD Multi-Task U-Net "
            f"trained {rec['epochs']} epochs by `amat run --adv none -- python examples/landmark/train.py` on {what}, "
            f"at {h}x{w}; the first {rec['images']} test images; clean MRE {rec['clean']:.2f} mm; inputs in [-1, 1]; "
            f"one torch thread. One evaluation with `--attacks pgd,ifgsm,worst` gives every row (round 2's worst "
            f"recomputed per sample from its kept statistics):\n\n" + head + body + src +
            f"\nCost, on the first {rec['ratio_images']} of these images: one evaluation with `--attacks "
            f"pgd,ifgsm,worst` (which runs heatmap and vote too) took {rec['cpu_combined']:.0f} s of CPU, the four "
            f"attacks one evaluation each {rec['cpu_separate']:.0f} s: **ratio {rec['ratio']:.3f}** (goal <= 1.0; "
            f"back to back in one run). The separate evaluations gave "
            f"{'the same' if rec['same_numbers'] else 'DIFFERENT'} numbers as the combined one.\n{END}\n")


def write_section(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text.rstrip("\n") + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


if __name__ == "__main__":
    main()
