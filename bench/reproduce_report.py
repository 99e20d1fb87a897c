"""Turn a reproduction (bench/reproduce_*.sh) into docs/results/<dataset>.md.

Round 2 protocol: every method (STD, two SAT eps, AMAT with the paper's semantics, AMAT
with ``--adv-boundary stop``) is trained and evaluated once per seed; Delta comes from one
``amat grid`` on the validation split. After every stage the script runs ``collect``, which
copies the run's small result files (stage records, commands, grid and evaluation JSON,
xi files, per-method epoch times and per-epoch margin summaries) into
``docs/results/<dataset>/runs/``: the page is generated from that folder only, so a
reproduction split over several sessions continues from committed state.

    python bench/reproduce_report.py collect DATASET OUT RUNS      (after each stage)
    python bench/reproduce_report.py restore DATASET OUT RUNS      (a fresh OUT takes over
                                                                    the committed grid and seeds)
    python bench/reproduce_report.py write DATASET RUNS REPORT_DIR (the page + README table)
    python bench/reproduce_report.py overview REPORT_DIR
    python bench/reproduce_report.py best-delta GRID_DIR           (prints the best Delta)
    python bench/reproduce_report.py take-grid RUNS GRID_DIR       (GRID_FROM: another committed
                                                                    run's grid, source recorded)
    python bench/reproduce_report.py machine | budget OUT K=V... | plans DATASET_DIR BATCH

Only the paper's numbers (cited, for comparison) are constants here.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amat_hooks.atomic_files import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from amat_hooks.cli import grid as grid_command  # noqa: E402
from amat_hooks.evaluation import EvalResult  # noqa: E402


@dataclass(frozen=True)
class Paper:
    """The paper's setting and Table 5 seconds per epoch (GPU) for one dataset."""

    table: str
    metric: str
    model: str
    budget: str
    epochs: int
    sat_eps: str
    xi_rule: str
    seconds: tuple[float, float, float]  # STD, SAT, AMAT per epoch (Table 5)


PAPER = {
    "hippocampus": Paper("Table 2 (ADI), Table 4 (TVDI)", "ADI", "nnU-Net 2d (batch 366, patch 56x40)",
                         "100 epochs x 50 iterations", 100, "1, 5, 10, 15", "mean", (10, 114, 120)),
    "bccd": Paper("Table 7 (mAP50-95)", "mAP50-95", "YOLOv5s (anchor-based, box/obj/cls loss) from scratch, "
                  "imgsz 320, batch 32", "300 epochs", 300, "1, 10, 15", "mean+2std", (6, 30, 35)),
    "isbi": Paper("Table 6 (MRE mm)", "MRE", "Multi-Task U-Net, 200x160, batch 8",
                  "500 epochs", 500, "1, 3, 5", "mean+2std", (12, 50, 53)),
}
# The paper's test-set rows (clean, PGD average, IFGSM average) quoted for comparison:
# Table 2 (Hippocampus, ADI), Table 6 (ISBI, MRE mm; STD = STD(Dice)), Table 7 (BCCD, mAP50-95).
PAPER_ROWS = {
    "hippocampus": {"AMAT": (0.7845, 0.6619, 0.7278), "SAT1": (0.7510, 0.4187, 0.6354),
                    "SAT5": (0.7305, 0.5572, 0.6596), "SAT10": (0.7175, 0.5809, 0.6593),
                    "SAT15": (0.7112, 0.5844, 0.6589), "STD": (0.7589, 0.1870, 0.5182)},
    "isbi": {"AMAT": (1.773, 2.117, 2.107), "SAT1": (1.814, 2.154, 2.145), "SAT3": (2.108, 2.311, 2.310),
             "SAT5": (2.177, 2.383, 2.384), "STD": (1.623, 14.829, 10.202)},
    "bccd": {"AMAT": (0.5989, 0.2262, 0.2322), "SAT1": (0.5810, 0.1709, 0.1981), "SAT10": (0.4722, 0.1874, 0.1888),
             "SAT15": (0.2565, 0.1320, 0.1324), "STD": (0.5993, 0.0028, 0.0213)},
}
PAPER["bccd_yolov5"], PAPER_ROWS["bccd_yolov5"] = PAPER["bccd"], PAPER_ROWS["bccd"]   # the same experiment
TITLES = {"hippocampus": "MSD Hippocampus (nnU-Net 2d)", "bccd": "BCCD blood cells (Ultralytics YOLO)",
          "bccd_yolov5": "BCCD blood cells (classic YOLOv5 train.py: box / obj / cls)",
          "isbi": "ISBI 2015 cephalometric landmarks (Multi-Task U-Net via amat run)"}
EVAL_NAME = {"hippocampus": "hippocampus", "bccd": "bccd", "isbi": "isbi", "bccd_yolov5": "bccd_yolov5"}
ROUND = {"bccd_yolov5": 3}   # the round a dataset's page belongs to (2 where not named)
#: where each dataset's runs keep their method folders (the trainer's own layout)
METHOD_PARENT = {"hippocampus": "results", "bccd": "yolo", "isbi": "train", "bccd_yolov5": "yolov5"}
ATTACK_NAMES = {"pgd": "PGD", "ifgsm": "IFGSM", "worst": "worst case", "segpgd": "SegPGD", "cospgd": "CosPGD",
                "mce": "masked CE"}


# -- small commands used by the shell scripts ------------------------------------------------------
def machine() -> dict:
    import torch

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else "none"}


GRID_SOURCE = "grid_source.json"


def take_grid(source_runs: str, grid_dir: Path) -> Path:
    """Use the Delta grid of another committed run (its ``runs/`` folder, GRID_FROM) instead of
    running one: a grid costs one adversarial fine-tune per Delta plus a validation evaluation.
    The source and its budget go into ``grid_source.json`` so the page says where Delta came from."""
    src = Path(source_runs)
    src = src if src.is_absolute() else REPO / src
    if not (src / "grid" / "grid.json").is_file():
        raise SystemExit(f"GRID_FROM={source_runs}: {src / 'grid' / 'grid.json'} does not exist; point GRID_FROM "
                         f"at a committed runs/ folder whose grid stage finished (docs/results/<dataset>/runs)")
    grid_dir.mkdir(parents=True, exist_ok=True)
    for f in (src / "grid").glob("grid*"):
        if f.name != GRID_SOURCE:
            shutil.copyfile(f, grid_dir / f.name)
    budget = read_json(src / "budget.json") if (src / "budget.json").is_file() else {}
    try:
        shown = str(src.resolve().relative_to(REPO))
    except ValueError:
        shown = str(src)
    atomic_write_json(grid_dir / GRID_SOURCE, {"runs": shown, "budget": budget})
    print(f"Delta grid taken from {shown} (best Delta {best_delta(grid_dir):g})")
    return grid_dir / GRID_SOURCE


def best_delta(grid_dir: Path) -> float:
    """The Delta ``amat grid`` chose, read back from its grid.json (same rule as its table)."""
    state = read_json(grid_dir / "grid.json")
    results = {float(k): EvalResult.from_dict(v["result"]) for k, v in state.items() if v.get("result")}
    if not results:
        raise SystemExit(f"{grid_dir / 'grid.json'} holds no evaluated grid point; run the grid stage first")
    return grid_command.best_delta(results)


def make_plans(dataset_dir: Path, batch: int) -> Path:
    """``nnUNetPlans_b<batch>.json``: nnU-Net's own plans with a smaller 2d batch (same patch,
    network and preprocessed data, which nnU-Net finds through ``data_identifier``)."""
    plans = read_json(dataset_dir / "nnUNetPlans.json")
    cfg = plans["configurations"]["2d"]
    print(f"nnU-Net planned 2d batch {cfg['batch_size']}, patch {cfg['patch_size']}; writing batch {batch}")
    cfg["batch_size"] = batch
    plans["plans_name"] = f"nnUNetPlans_b{batch}"
    return atomic_write_json(dataset_dir / f"nnUNetPlans_b{batch}.json", plans)


# -- per-method training records: epoch seconds and the per-epoch margin summary ----------------------
def _nnunet_epochs(root: Path) -> list[float]:
    # loading a trainer for evaluation starts another (epoch-less) log: take the newest with epochs
    logs = sorted(root.rglob("training_log_*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        found = [float(v) for v in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text(errors="replace"))]
        if found:
            return found
    return []


def _yolo_epochs(results_csv: Path) -> list[float]:
    if not results_csv.is_file():
        return []
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    times = [float(r["time"]) for r in rows if r.get("time")]
    return [b - a for a, b in zip([0.0] + times, times)]


#: the training bar's last state in a classic YOLOv5 log: "  3/5   0G  box obj cls  inst  160: 100% ━━ 19/19 1.4it/s 13.9s"
_Y5_BAR = re.compile(r"^\s*(\d+)/\d+\s+\S+G\s.*\s100%\s+\S+\s+(\d+)/\2\s+\S+\s+([0-9:.]+)s?\s*$")


def _clock(text: str) -> float:
    """Seconds of a progress-bar time: '13.9' (s), '1:05', '1:02:03'."""
    parts = [float(p) for p in text.split(":")]
    return sum(v * 60 ** i for i, v in enumerate(reversed(parts)))


def _yolov5_epochs(log: Path) -> list[float]:
    """Seconds of each training epoch of a classic YOLOv5 run, read from its progress bar
    (the script's results.csv has no time column)."""
    if not log.is_file():
        return []
    last: dict[int, float] = {}
    for frag in re.split(r"[\r\n]|\x1b\[K", log.read_text(errors="replace")):
        m = _Y5_BAR.match(frag)
        if m:
            last[int(m.group(1))] = _clock(m.group(3))
    return [last[k] for k in sorted(last)]


def _landmark_epochs(log: Path) -> list[float]:
    if not log.is_file():
        return []
    return [float(v) for v in re.findall(r"^Epoch \d+ train rows .*\(([0-9.]+) s\)", log.read_text(errors="replace"),
                                         re.MULTILINE)]


def method_files(dataset: str, seed_dir: Path, method: str) -> tuple[list[float], Path | None]:
    """(seconds of each training epoch, the file holding the adversarial state) of one method."""
    from amat_hooks.state import read_adversarial_state  # noqa: F401 (checked in training_record)

    if dataset == "hippocampus":
        root = seed_dir / "results" / method
        ckpts = sorted(root.rglob("checkpoint_final.pth"))
        return _nnunet_epochs(root), (ckpts[0] if ckpts else None)
    if dataset == "bccd":
        run = seed_dir / "yolo" / method
        side = run / "weights" / "amat_state.json"
        return _yolo_epochs(run / "results.csv"), (side if side.is_file() else None)
    log = seed_dir.parent / "logs" / f"s{seed_dir.name[4:]}_train_{method}.log"
    if dataset == "bccd_yolov5":
        side = seed_dir / "yolov5" / method / "weights" / "amat_state.json"
        return _yolov5_epochs(log), (side if side.is_file() else None)
    state = seed_dir / "train" / method / "amat_state.json"
    return _landmark_epochs(log), (state if state.is_file() else None)


def training_record(dataset: str, seed_dir: Path, method: str) -> dict:
    from amat_hooks.state import read_adversarial_state

    seconds, state_file = method_files(dataset, seed_dir, method)
    rec: dict = {"epoch_seconds": seconds}
    state = read_adversarial_state(state_file) if state_file is not None else None
    if state is not None:
        rec["history"] = state.history
        rec["boundary"] = state.boundary
        rec["xi_source"] = state.xi_source
        if state.margins:
            m = sorted(state.margins)
            rec["margins_final"] = {"n": len(m), "mean": statistics.fmean(m), "median": statistics.median(m),
                                    "min": m[0], "max": m[-1]}
    return rec


def _slim(obj):
    """An evaluation or grid record without the per-sample raw statistics (detection matches,
    Dice counts: megabytes per model, needed only while evaluating); scores stay."""
    if isinstance(obj, dict):
        return {k: (_slim({kk: vv for kk, vv in v.items() if kk != "stats"})
                    if k == "per_sample" and isinstance(v, dict) else _slim(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_slim(v) for v in obj]
    return obj


def _slim_copy(src: Path, dst: Path) -> None:
    """Commit-sized copy of an evaluation or grid JSON file: compact, without raw statistics."""
    atomic_write_text(dst, json.dumps(_slim(read_json(src)), separators=(",", ":")) + "\n")


def _seed_union(*lists: str) -> str:
    """"0 1" and "2" -> "0 1 2": seeds in numeric order, each once."""
    return " ".join(sorted({s for text in lists for s in text.split()}, key=int))


def write_budget(folder: Path, budget: dict) -> None:
    """Write ``folder/budget.json``. SEEDS becomes the union with the seeds already recorded
    there: a run of one more seed (SEEDS=2) adds to the record instead of replacing it."""
    budget = dict(budget)
    old = folder / "budget.json"
    if "SEEDS" in budget and old.is_file():
        budget["SEEDS"] = _seed_union(read_json(old).get("SEEDS", ""), budget["SEEDS"])
    atomic_write_json(old, budget)


def collect(dataset: str, out: Path, runs: Path) -> Path:
    """Copy what the page needs (small files only) from the run folder to ``runs``."""
    runs.mkdir(parents=True, exist_ok=True)
    if (out / "budget.json").is_file():
        write_budget(runs, read_json(out / "budget.json"))
    for name in ("machine.json", "commands.txt"):
        if (out / name).is_file():
            shutil.copyfile(out / name, runs / name)
    (runs / "stages").mkdir(exist_ok=True)
    for rec in (out / "stages").glob("*.json"):
        shutil.copyfile(rec, runs / "stages" / rec.name)
    if (out / "grid" / "grid.json").is_file():
        (runs / "grid").mkdir(exist_ok=True)
        for f in (out / "grid").glob("grid*"):
            if f.suffix == ".json":
                _slim_copy(f, runs / "grid" / f.name)
            elif f.suffix == ".md":
                shutil.copyfile(f, runs / "grid" / f.name)
    name = EVAL_NAME[dataset]
    for seed_dir in sorted(out.glob("seed*")):
        dst = runs / seed_dir.name
        dst.mkdir(exist_ok=True)
        for xi in seed_dir.glob("xi*.json"):
            shutil.copyfile(xi, dst / xi.name)
        ev = seed_dir / "eval"
        if (ev / f"{name}.json").is_file():
            (dst / "eval").mkdir(exist_ok=True)
            for f in ev.glob(f"{name}*"):
                if f.suffix == ".json":
                    _slim_copy(f, dst / "eval" / f.name)
                elif f.suffix in (".md", ".png"):
                    shutil.copyfile(f, dst / "eval" / f.name)
        methods = _methods_of(dataset, seed_dir)
        if methods:
            training = {m: training_record(dataset, seed_dir, m) for m in methods}
            atomic_write_json(dst / "training.json", training)
    return runs


def restore(dataset: str, out: Path, runs: Path) -> list[str]:
    """Continue from committed state: a fresh run folder takes over the grid and every seed
    that finished its evaluation from ``runs`` (their stage records, so those stages are
    skipped, and the grid's files, which later seeds read their Delta from). A seed that did
    not finish is run again: its weights were not committed. Refuses to mix budgets."""
    if not (runs / "budget.json").is_file() or not (out / "budget.json").is_file():
        return []
    committed, now = read_json(runs / "budget.json"), read_json(out / "budget.json")
    differ = sorted(k for k in set(committed) | set(now) if k != "SEEDS" and committed.get(k) != now.get(k))
    if differ:
        raise SystemExit(
            f"[{dataset}] {runs} holds results made with another budget ("
            + ", ".join(f"{k}: {committed.get(k)} there, {now.get(k)} now" for k in differ)
            + "); rerun with the same settings to continue them, or set REPORT to another folder")
    records = {p.stem: read_json(p) for p in (runs / "stages").glob("*.json")}
    done = {name for name, rec in records.items() if rec.get("status") == 0}
    taken = []
    if "grid" in done and (runs / "grid" / "grid.json").is_file() and not (out / "grid" / "grid.json").is_file():
        (out / "grid").mkdir(parents=True, exist_ok=True)
        for f in (runs / "grid").glob("grid*"):
            shutil.copyfile(f, out / "grid" / f.name)
        shutil.copyfile(runs / "stages" / "grid.json", out / "stages" / "grid.json")
        taken.append("the Delta grid")
    for name in sorted(done):
        m = re.fullmatch(r"s(\d+)_eval", name)
        if not m or (out / "stages" / f"{name}.json").is_file():
            continue
        seed = m.group(1)
        for rec in sorted(done):
            if rec.startswith(f"s{seed}_"):
                shutil.copyfile(runs / "stages" / f"{rec}.json", out / "stages" / f"{rec}.json")
        taken.append(f"seed {seed}")
    if taken and (runs / "commands.txt").is_file() and not (out / "commands.txt").is_file():
        shutil.copyfile(runs / "commands.txt", out / "commands.txt")
    if taken:
        print(f"[{dataset}] continuing from the committed results in {runs}: {', '.join(taken)} "
              f"(their stages are skipped)")
    return taken


def _methods_of(dataset: str, seed_dir: Path) -> list[str]:
    folder = seed_dir / METHOD_PARENT[dataset]
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "pretrain")


# -- aggregation over seeds -----------------------------------------------------------------------------
def _ordered(names) -> list[str]:
    """STD, SAT by increasing eps, AMAT, AMAT-stop - the paper's row order."""
    def key(name: str) -> tuple[int, float, str]:
        if name.startswith("SAT"):
            try:
                return 1, float(name[3:]), name
            except ValueError:
                return 1, 0.0, name
        return {"STD": (0, 0.0, name), "AMAT": (2, 0.0, name), "AMAT-authors": (3, 0.0, name),
                "AMAT-stop": (3, 1.0, name)}.get(name, (4, 0.0, name))
    return sorted(names, key=key)


def _ms(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    m, s = _ms(values)
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(values) > 1 else "")


def load_seeds(dataset: str, runs: Path) -> dict[str, dict[str, EvalResult]]:
    """``{seed: {method: EvalResult}}`` for every seed whose evaluation finished."""
    name = EVAL_NAME[dataset]
    seeds = {}
    for d in sorted(runs.glob("seed*")):
        f = d / "eval" / f"{name}.json"
        if f.is_file():
            seeds[d.name[4:]] = {k: EvalResult.from_dict(v) for k, v in read_json(f).items()}
    return seeds


def per_method(seeds: dict[str, dict[str, EvalResult]]) -> dict[str, list[EvalResult]]:
    methods: dict[str, list[EvalResult]] = {}
    for results in seeds.values():
        for k, r in results.items():
            methods.setdefault(k, []).append(r)
    return {k: methods[k] for k in _ordered(methods)}


NOT_JUDGED = "not judged (one seed)"


def verdict(diff: float, spread: float) -> str:
    """A difference counts only where it is larger than the seed spread."""
    if diff > spread:
        return "holds"
    if diff < -spread:
        return "does not hold"
    return "within noise"


def compare(a: list[float], b: list[float], higher: bool) -> tuple[float, float, str]:
    """(mean advantage of a over b in the better direction, seed spread, verdict)."""
    ma, sa = _ms(a)
    mb, sb = _ms(b)
    diff = (ma - mb) if higher else (mb - ma)
    spread = max(sa, sb)
    if min(len(a), len(b)) < 2:     # no spread to judge by: one seed says nothing about noise
        return diff, spread, NOT_JUDGED
    return diff, spread, verdict(diff, spread)


def claims(methods: dict[str, list[EvalResult]], seconds: dict[str, float | None], which: str = "AMAT") -> list[str]:
    """The paper's claims on the seed means: (a) more robust than every SAT (per attack, and
    AUC_robust), (b) clean accuracy not below STD, (c) time per epoch close to SAT."""
    if which not in methods:
        return [f"{which}: not trained in this run"]
    amat = methods[which]
    m, higher = amat[0].metric, amat[0].higher_is_better
    sats = [k for k in methods if k.startswith("SAT")]
    lines = []
    for attack in amat[0].noisy:
        parts = []
        outcome = []
        for s in sats:
            d, sp, v = compare([r.average(attack) for r in amat], [r.average(attack) for r in methods[s]], higher)
            parts.append(f"{s}: {d:+.4f} (spread {sp:.4f}) {v}")
            outcome.append(v)
        if "STD" in methods:
            d, sp, v = compare([r.average(attack) for r in amat], [r.average(attack) for r in methods["STD"]], higher)
            parts.append(f"STD: {d:+.4f} (spread {sp:.4f}) {v}")
        held = [s for s, v in zip(sats, outcome) if v == "holds"]
        behind = [s for s, v in zip(sats, outcome) if v == "does not hold"]
        if NOT_JUDGED in outcome:
            overall = f"**{NOT_JUDGED}**: a claim needs at least 2 seeds"
        elif len(held) == len(sats):
            overall = "**holds** against every SAT"
        elif behind:
            overall = f"**does not hold**: behind {', '.join(behind)}"
        else:
            overall = "**within noise**" + (f": ahead of {', '.join(held)} only" if held else "")
        lines.append(f"(a) {ATTACK_NAMES.get(attack, attack)}: {which}'s average {m} over the levels vs "
                     + "; ".join(parts) + f" - {overall}.")
    if "STD" in methods:
        d, sp, v = compare([r.clean[m] for r in amat], [r.clean[m] for r in methods["STD"]], higher)
        if v == NOT_JUDGED:
            outcome_b = f"**{NOT_JUDGED}**"
        else:
            # the claim is "not below STD": a difference inside the spread neither shows it
            # nor refutes it, so it is reported as noise, not as holding
            outcome_b = {"holds": "**holds** (above STD by more than the spread)",
                         "within noise": "**within noise** (not shown to be below STD)",
                         "does not hold": "**does not hold** (below STD by more than the spread)"}[v]
        lines.append(f"(b) clean {m}: {which} vs STD {d:+.4f} (spread {sp:.4f}) - {outcome_b}.")
    sat_times = [seconds[s] for s in sats if seconds.get(s)]
    if seconds.get(which) and sat_times:
        r = seconds[which] / statistics.fmean(sat_times)
        lines.append(f"(c) time per epoch: {which} / mean SAT = {r:.2f} (paper Table 5: 1.00-1.17) - "
                     + ("**holds** (within 1.2)" if r <= 1.2 else "**does not hold**") + ".")
    return lines


#: The paired rule: a claim holds when the paired t-test over seeds gives p below this and
#: the mean paired difference has the claim's sign (every method of a seed starts from that
#: seed's clean model, so the pretrain's spread cancels in the differences).
PAIRED_ALPHA = 0.05


def paired_differences(seeds: dict[str, dict[str, EvalResult]], which: str, other: str, attack: str) -> list[float]:
    """Per seed where both exist: ``which``'s average over the levels minus ``other``'s, in the
    better direction (positive: ``which`` is more robust)."""
    out = []
    for results in seeds.values():
        if which in results and other in results:
            a, b = results[which], results[other]
            d = a.average(attack) - b.average(attack)
            out.append(d if a.higher_is_better else -d)
    return out


def paired_p(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (mean difference 0), None below 2 seeds."""
    if len(diffs) < 2:
        return None
    m, sd = _ms(diffs)
    if sd == 0:
        return 0.0 if m != 0 else 1.0
    from scipy import stats

    t = m / (sd / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), df=len(diffs) - 1))


def paired_lines(seeds: dict[str, dict[str, EvalResult]], which: str = "AMAT") -> list[str]:
    """The paired table: per attack, every other method's per-seed difference to ``which``."""
    methods = per_method(seeds)
    if which not in methods:
        return []
    attacks = list(methods[which][0].noisy)
    others = [k for k in methods if k != which]
    L = [f"| attack | {which} minus | per seed | mean ± sd | paired t-test p | verdict |", "|---|---|---|---|---|---|"]
    for attack in attacks:
        for o in others:
            d = paired_differences(seeds, which, o, attack)
            if not d:
                continue
            p = paired_p(d)
            if p is None:
                v = NOT_JUDGED
            elif p < PAIRED_ALPHA:
                v = "holds" if statistics.fmean(d) > 0 else "does not hold"
            else:
                v = "within noise"
            L.append(f"| {ATTACK_NAMES.get(attack, attack)} | {o} | {', '.join(f'{x:+.4f}' for x in d)} | "
                     f"{_pm(d)} | {'-' if p is None else f'{p:.3f}'} | {v} |")
    return L


def _median_after_first(values: list[float]) -> float | None:
    """Median epoch time, the first epoch left out where there are more (start-up; the
    landmark script decodes and caches its images in the first epoch)."""
    if not values:
        return None
    return statistics.median(values[1:] if len(values) >= 2 else values)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _relpaths(text: str) -> str:
    # one path at a time: a --models list holds several, separated by "," and "="
    # the output folder's whole name: runs/reproduce/hippocampus_long is $OUT, not $OUT_long
    text = re.sub(r"/[^\s,=]*?/runs/reproduce/[\w.-]+", "$OUT", text)
    text = text.replace(str(REPO), ".")
    data = str((REPO / ".." / "shared" / "data").resolve())
    return text.replace(data, "../shared/data")


def _stages(runs: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in (runs / "stages").glob("*.json")]
    return sorted(recs, key=lambda r: r["start"])


def _alone(stages: list[dict], seed: str | None) -> str:
    """Whether a seed's training stages ran alone: another stage of the run overlapping one of
    them in time (seeds run side by side) makes its seconds per epoch a loaded machine's."""
    mine = [s for s in stages if re.fullmatch(rf"s{seed}_train_.+", s["stage"])]
    others = [s for s in stages if not s["stage"].startswith(f"s{seed}_")]
    hit = sorted({o["stage"] for m in mine for o in others if o["start"] < m["end"] and m["start"] < o["end"]})
    if not hit:
        return "stages run alone"
    return (f"NOT alone: {len(hit)} stage(s) of other seeds ran at the same time ({', '.join(hit[:3])}"
            f"{', ...' if len(hit) > 3 else ''}), so the rows are not a clean Table 5 comparison")


def results_table(methods: dict[str, list[EvalResult]], attack: str) -> list[str]:
    first = next(iter(methods.values()))[0]
    m, levels = first.metric, first.levels
    head = ["method", f"clean {m}"] + [f"{ATTACK_NAMES.get(attack, attack)} {lv:g}" for lv in levels] + [
        "avg", "AUC_robust"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, rs in methods.items():
        if attack not in rs[0].noisy:
            continue
        cells = [k, _pm([r.clean[m] for r in rs])]
        cells += [_pm([r.noisy[attack][lv][m] for r in rs]) for lv in levels]
        cells += [_pm([r.average(attack) for r in rs]), _pm([r.auc_robust(attack) for r in rs])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def margin_lines(training: dict[str, dict[str, dict]], sat_eps: list[float], delta: float | None = None,
                 readme: str = "README.md") -> list[str]:
    """Margin mean per epoch (AMAT and AMAT-stop, every seed), the end-of-run check, the
    updates per updated sample (a margin grows by at most Delta per update), and a line where
    nine in ten margins never got past Delta (AMAT then trained as a per-sample SAT at
    eps ~ Delta: almost no noisy sample stayed below xi)."""
    L = []
    smallest = min(sat_eps) if sat_eps else None
    for method in ("AMAT", "AMAT-authors", "AMAT-stop"):
        rows = [(seed, rec[method]) for seed, rec in training.items() if method in rec and rec[method].get("history")]
        if not rows:
            continue
        L += [f"**{method}**: margin mean per epoch (seed: values)", ""]
        for seed, rec in rows:
            means = [h.get("margin_mean") for h in rec["history"]]
            final = rec.get("margins_final") or {}
            med = final.get("median")
            # margins are float32: (||x - x~|| + E) / 2 lands at 0.99999999 where it means 1
            reached = med is not None and smallest is not None and med >= smallest * (1 - 1e-6)
            ok = "" if smallest is None or med is None else (
                f" - median {med:.4g} {'>=' if reached else '<'} smallest SAT eps {smallest:g}")
            last = rec["history"][-1]
            upd, cnt = last.get("margin_updates"), last.get("margin_count")
            # a margin grows by at most Delta per update: updates per sample bound what it can
            # reach. The table holds the samples updated at least once (Algorithm 1 updates every
            # sample it trains on; AMAT-stop skips those whose clean loss is already above xi)
            visits = "" if not upd or not cnt else (
                f"; {int(upd)} margin updates over {int(cnt)} samples updated ({upd / cnt:.2f} per sample)")
            L.append(f"- seed {seed}: " + ", ".join(_fmt(v, 3) for v in means) + ok + visits)
        q90 = [rec["history"][-1].get("margin_q90") for _, rec in rows]
        if delta is not None and q90 and all(q is not None and q <= 1.01 * delta for q in q90):
            L += ["", f"On every seed at least 90 % of {method}'s margins ended at or below Delta = {delta:g} "
                  f"(final 90th percentile {', '.join(f'{q:.3g}' for q in q90)}): almost no noisy sample stayed "
                  f"below xi, so {method} trained as a per-sample SAT at eps ~ Delta. Why on this dataset: "
                  f"[README, the xi rows]({readme}#how-this-differs-from-the-paper-and-from-the-authors-code)."]
        L.append("")
    return L


def _subset(budget: dict) -> str:
    """The evaluation subset, stated where a table's scores come from (MAX_CASES of the SPLIT's test cases)."""
    cases, split = int(budget.get("MAX_CASES") or 0), budget.get("SPLIT", "")
    if cases <= 0:
        return ""
    total = split.split(",")[2] if split.count(",") == 2 else "?"
    return f"; a subset: MAX_CASES={cases} of the {total} test cases"


def _delta_line(delta: str, source: Path) -> str:
    """Where AMAT's Delta came from: this run's grid, or (GRID_FROM) another run's, with its budget."""
    line = f"- AMAT's Delta: {delta}, chosen by `amat grid` on the validation split (table below)"
    if not source.is_file():
        return line
    src = read_json(source)
    budget = src.get("budget", {})
    keys = ", ".join(f"{k}={budget[k]}" for k in ("PRE_EPOCHS", "EPOCHS", "ITERS", "DELTAS") if k in budget)
    return (line[:-len(" (table below)")] + f" of another run, taken over (GRID_FROM): `{src.get('runs')}`"
            + (f", made at {keys}" if keys else "") + "; this run did not run its own grid (table below)")


def _results_readme(report_dir: Path) -> str:
    """The link from a page in report_dir to docs/results/README.md (pages of other budgets sit
    one folder down, e.g. docs/results/hippocampus_short/). A page written outside the repository
    (a test's temporary folder) names the README by its repository path: a relative link would
    climb out through the machine's absolute path."""
    readme = REPO / "docs" / "results" / "README.md"
    if not report_dir.resolve().is_relative_to(REPO):
        return "docs/results/README.md"
    return Path(os.path.relpath(readme, report_dir.resolve())).as_posix()


def write(dataset: str, runs: Path, report_dir: Path) -> Path:
    paper = PAPER[dataset]
    name = EVAL_NAME[dataset]
    seeds = load_seeds(dataset, runs)
    if not seeds:
        raise SystemExit(f"no finished evaluation under {runs}/seed*/eval/{name}.json: run the eval stages first")
    methods = per_method(seeds)
    budget = read_json(runs / "budget.json") if (runs / "budget.json").is_file() else {}
    mach = read_json(runs / "machine.json") if (runs / "machine.json").is_file() else machine()
    delta = f"{best_delta(runs / 'grid'):g}" if (runs / "grid" / "grid.json").is_file() else "?"
    training = {d.name[4:]: read_json(d / "training.json") for d in sorted(runs.glob("seed*"))
                if (d / "training.json").is_file()}
    first_seed = next(iter(training), None)
    seconds = {m: _median_after_first((training.get(first_seed) or {}).get(m, {}).get("epoch_seconds", []))
               for m in methods}
    sat_eps = [float(k[3:]) for k in methods if k.startswith("SAT")]
    assets = report_dir / dataset
    assets.mkdir(parents=True, exist_ok=True)
    stages = _stages(runs)
    total = sum(s["seconds"] for s in stages)
    first = next(iter(methods.values()))[0]
    attacks = list(first.noisy)
    scored = f"{first.scored or f'{first.samples} samples'} per seed{_subset(budget)}"

    L = [f"# {TITLES[dataset]}: {' / '.join(_ordered({k.rstrip('0123456789.') for k in methods}))} at CPU scale "
         f"(round {ROUND.get(dataset, 2)})", ""]
    L += [f"Generated by `python bench/reproduce_report.py write {dataset} ...` from the small result files of "
          f"`bash bench/reproduce_{dataset}.sh`, committed in [`{dataset}/runs/`]({dataset}/runs/). Paper "
          f"counterpart: {paper.table}. Seeds evaluated: {', '.join(seeds)}; every table shows mean ± standard "
          f"deviation over them, and a claim counts only where the difference is larger than that spread.", ""]
    L += ["## Setting", "",
          f"- machine: {mach['cores']} cores ({mach['cpu']}), GPU: {mach['gpu']}, Python {mach['python']}, "
          f"torch {mach['torch']}",
          f"- wall time of all stages so far: {total / 60:.1f} min",
          "- budget: " + ", ".join(f"{k}={v}" for k, v in budget.items()),
          f"- paper: {paper.model}, {paper.budget}, SAT eps {paper.sat_eps}, xi rule {paper.xi_rule}",
          _delta_line(delta, runs / "grid" / GRID_SOURCE),
          f"- evaluation: test split, {scored}; attacks "
          + ", ".join(f"{ATTACK_NAMES.get(a, a)} ({first.steps.get(a, '-')} steps)" if a != "worst" else
                      "worst case per sample over the others" for a in attacks), ""]
    xi_sources = sorted({rec.get("xi_source") or "?" for tr in training.values() for m, rec in tr.items()
                         if m.startswith("AMAT")})
    if xi_sources:
        L += ["xi of the AMAT runs: " + "; ".join(_relpaths(s) for s in xi_sources), ""]
    passes = sorted({read_json(f).get("source", {}).get("augmented_passes", 0) for f in runs.glob("seed*/xi.json")})
    if passes:
        L += ["xi scored on " + (f"{passes[-1]} augmented pass(es) of the training images in train mode, as the "
                                 f"training batches see them" if passes[-1] else
                                 "the un-augmented training images in eval mode") + ".", ""]
    L += [f"## Test split ({scored})", ""]
    for attack in attacks:
        L += [f"### {ATTACK_NAMES.get(attack, attack)}", ""] + results_table(methods, attack) + [""]
    for seed in seeds:
        png = runs / f"seed{seed}" / "eval" / f"{name}.png"
        if png.is_file():
            L.append(f"![seed {seed}]({dataset}/runs/seed{seed}/eval/{name}.png)")
    L += ["", "All clean-data metrics (mean over seeds):", ""]
    names = sorted({m for rs in methods.values() for r in rs for m in r.clean})
    L += ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k, rs in methods.items():
        L.append(f"| {k} | " + " | ".join(_pm([r.clean[n] for r in rs if n in r.clean]) for n in names) + " |")
    L += ["", "## AMAT's margins", ""] + margin_lines(training, sat_eps, None if delta == "?" else float(delta),
                                                            _results_readme(report_dir))
    L += ["## Delta grid (validation split, seed of the first run)", ""]
    for f in sorted((runs / "grid").glob("grid*.md")):
        L += [f"`{f.name}`:", "", f.read_text().strip(), ""]
    L += [f"## Seconds per training epoch (Table 5 analogue, seed {first_seed}, {_alone(stages, first_seed)})", "",
          "| method | epochs | median s/epoch (first epoch left out) | x STD | x mean SAT | paper s/epoch (GPU) |",
          "|---|---|---|---|---|---|"]
    sat_times = [t for k, t in seconds.items() if k.startswith("SAT") and t]
    sat_mean = statistics.fmean(sat_times) if sat_times else None
    for method, t in seconds.items():
        n = len((training.get(first_seed) or {}).get(method, {}).get("epoch_seconds", []))
        col = 0 if method == "STD" else 2 if method.startswith("AMAT") else 1
        L.append(f"| {method} | {n} | {_fmt(t, 2)} | {_fmt(t / seconds['STD'] if t and seconds.get('STD') else None, 2)}"
                 f" | {_fmt(t / sat_mean if t and sat_mean else None, 2)} | {paper.seconds[col]} |")
    L += ["", "## The paper's claims on this run", ""] + [f"- {c}" for c in claims(methods, seconds)]
    paired = paired_lines(seeds)
    if paired:
        L += ["", f"Paired over seeds (each seed's methods start from that seed's clean model): AMAT's average over "
              f"the levels minus each other method's, positive = AMAT more robust; a claim holds where the paired "
              f"t-test gives p < {PAIRED_ALPHA:g} with the sign of the claim. With {len(seeds)} seeds the test is "
              f"weak: within noise here is no evidence of a tie.", ""] + paired
    variants = [k for k in methods if k.startswith("AMAT-")]
    for k in variants:
        L += [f"- {k}: {c}" for c in claims(methods, seconds, k)]
    L += ["", "## Commands", "", "Run in this order by the script (`$OUT` is its output folder); each is a stage "
          "with its own log.", "", "```"]
    if (runs / "commands.txt").is_file():
        L += [_relpaths(line.rstrip()) for line in (runs / "commands.txt").read_text().splitlines() if line.strip()]
    L += ["```", "", "| stage | minutes |", "|---|---|"] + [
        f"| {s['stage']} | {s['seconds'] / 60:.1f} |" for s in stages] + [""]
    path = report_dir / f"{dataset}.md"
    atomic_write_text(path, "\n".join(L) + "\n")
    atomic_write_json(assets / "summary.json", {
        "delta": delta, "seeds": list(seeds), "seconds_per_epoch": seconds, "stages_minutes": total / 60,
        "paired": paired,
        "claims": claims(methods, seconds) + [f"{k}: {c}" for k in variants for c in claims(methods, seconds, k)],
        "methods": {k: {"clean": [r.clean[r.metric] for r in rs],
                        **{a: [r.average(a) for r in rs] for a in rs[0].noisy},
                        "auc_robust": {a: [r.auc_robust(a) for r in rs] for a in rs[0].noisy}}
                    for k, rs in methods.items()},
        "metric": first.metric, "higher_is_better": first.higher_is_better, "levels": first.levels})
    print(f"wrote {path}")
    return path


def _input_scale(dataset: str, budget_file: Path) -> float:
    """This run's input side / the paper's (L2 levels and SAT eps were scaled by it)."""
    budget = read_json(budget_file) if budget_file.is_file() else {}
    if dataset in ("bccd", "bccd_yolov5") and "IMGSZ" in budget:
        return float(budget["IMGSZ"]) / 320
    if dataset == "isbi" and "H" in budget:
        return float(budget["H"]) / 200
    return 1.0


def _paper_name(name: str, scale: float) -> str:
    """The paper's row for a method: SAT eps named at the paper's input size."""
    m = re.fullmatch(r"SAT([0-9.]+)", name)
    return f"SAT{float(m.group(1)) / scale:g}" if m else name


def overview(report_dir: Path) -> str:
    """The generated part of docs/results/README.md: this run's rows next to the paper's."""
    L = ["| dataset | method | seeds | clean | PGD avg | IFGSM avg | worst avg | s/epoch | paper: clean / PGD avg / "
         "IFGSM avg (SAT eps at the paper's input size) |", "|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    # a report folder holds one round's pages: round 2's (docs/results) or a later one's
    here = max([ROUND.get(d, 2) for d in os.listdir(report_dir) if (report_dir / d / "summary.json").is_file()] or [2])
    for dataset in ("hippocampus", "isbi", "bccd", "bccd_yolov5"):
        if ROUND.get(dataset, 2) != here:
            continue
        f = report_dir / dataset / "summary.json"
        summ = read_json(f) if f.is_file() else None
        if not summ or "methods" not in summ:
            L.append(f"| {dataset} | (round {here} not run yet) | | | | | | | |")
            continue
        scale = _input_scale(dataset, report_dir / dataset / "runs" / "budget.json")
        for name in _ordered(summ["methods"]):
            v = summ["methods"][name]
            paper = PAPER_ROWS[dataset].get(_paper_name(name, scale))
            L.append(f"| {dataset} | {name} | {len(v['clean'])} | {_pm(v['clean'])} | {_pm(v.get('pgd', []))} | "
                     f"{_pm(v.get('ifgsm', []))} | {_pm(v.get('worst', []))} | "
                     f"{_fmt(summ['seconds_per_epoch'].get(name), 2)} | "
                     + (" / ".join(f"{x:g}" for x in paper) if paper else "-") + " |")
        verdicts += [f"- {dataset}: {c}" for c in summ["claims"]]
    return "\n".join(L + ["", "Claims, as checked by the generator on the seed means:", ""] + verdicts)


def write_overview(report_dir: Path) -> Path:
    path = report_dir / "README.md"
    begin, end = "<!-- generated: bench/reproduce_report.py overview -->", "<!-- end generated -->"
    text = path.read_text() if path.is_file() else f"# Results\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, head + begin + "\n" + overview(report_dir) + "\n" + end + tail)
    print(f"wrote {path}")
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd = argv[0]
    if cmd == "machine":
        print(json.dumps(machine()))
    elif cmd == "budget":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        write_budget(out, dict(a.split("=", 1) for a in argv[2:]))
    elif cmd == "plans":
        make_plans(Path(argv[1]), int(argv[2]))
    elif cmd == "best-delta":
        print(f"{best_delta(Path(argv[1])):g}")
    elif cmd == "take-grid":
        take_grid(argv[1], Path(argv[2]))
    elif cmd == "restore":
        restore(argv[1], Path(argv[2]).resolve(), Path(argv[3]))
    elif cmd == "collect":
        collect(argv[1], Path(argv[2]).resolve(), Path(argv[3]))
    elif cmd == "write":
        write(argv[1], Path(argv[2]).resolve(), Path(argv[3]))
        write_overview(Path(argv[3]))
    elif cmd == "overview":
        write_overview(Path(argv[1]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
