"""Turn a finished reproduction (bench/reproduce_*.sh) into docs/results/<dataset>.md.

Every number in the page is read from what the run wrote: the evaluation JSON of
``amat eval``, the grid JSON of ``amat grid``, each trainer's own per-epoch timing (nnU-Net's
training log, Ultralytics' results.csv, the landmark script's epoch lines) and the stage
records of bench/reproduce_common.sh. Only the paper's numbers (cited, for comparison) are
constants here.

    python bench/reproduce_report.py write DATASET OUT REPORT_DIR
    python bench/reproduce_report.py overview REPORT_DIR       (the table in REPORT_DIR/README.md)
    python bench/reproduce_report.py best-delta GRID_DIR       (prints the best Delta)
    python bench/reproduce_report.py machine | budget OUT K=V... | plans DATASET_DIR BATCH
"""
from __future__ import annotations

import csv
import json
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

from amat_hooks.cli import grid as grid_command
from amat_hooks.evaluation import EvalResult
from amat_hooks.atomic_files import atomic_write_json, atomic_write_text, read_json


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
    "bccd": Paper("Table 7 (mAP50-95)", "mAP50-95", "YOLOv5s from scratch, imgsz 320, batch 32",
                  "300 epochs", 300, "1, 10, 15", "mean+2std", (6, 30, 35)),
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
TITLES = {"hippocampus": "MSD Hippocampus (nnU-Net 2d)", "bccd": "BCCD blood cells (Ultralytics YOLO)",
          "isbi": "ISBI 2015 cephalometric landmarks (Multi-Task U-Net via amat run)"}
EVAL_NAME = {"hippocampus": "hippocampus", "bccd": "bccd", "isbi": "isbi"}


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


# -- per-epoch training time, from each trainer's own records ---------------------------------------
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


def _landmark_epochs(log: Path) -> list[float]:
    if not log.is_file():
        return []
    return [float(v) for v in re.findall(r"^Epoch \d+ train rows .*\(([0-9.]+) s\)", log.read_text(errors="replace"),
                                         re.MULTILINE)]


def epoch_seconds(dataset: str, out: Path, method: str, delta: str | None = None) -> list[float]:
    """Seconds of each training epoch of ``method``: STD, SAT<eps>, AMAT (the grid run with
    ``delta``) or a follow-up variant AMAT_<name> (trained by its own one-point grid in
    ``followup/<name>``)."""
    if method.startswith("AMAT_"):
        runs = sorted((out / "followup" / method[5:]).glob("delta_*"))
        folder = runs[0] if runs else out / "followup" / method[5:] / "missing"
    else:
        folder = out / "grid" / f"delta_{delta}"
    amat = method.startswith("AMAT")
    if dataset == "hippocampus":
        return _nnunet_epochs(folder / "results" if amat else out / "results" / method)
    if dataset == "bccd":
        return _yolo_epochs((folder / "train" if amat else out / "yolo" / method) / "results.csv")
    return _landmark_epochs(folder / "train.log" if amat else out / "logs" / f"train_{method}.log")


# -- the page ---------------------------------------------------------------------------------------
def _median_after_first(values: list[float]) -> float | None:
    """Median epoch time, the first epoch left out where there are more (start-up; the
    landmark script decodes and caches its images in the first epoch)."""
    if not values:
        return None
    return statistics.median(values[1:] if len(values) >= 2 else values)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _stages(out: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in (out / "stages").glob("*.json")]
    return sorted(recs, key=lambda r: r["start"])


def _relpaths(text: str, out: Path) -> str:
    text = text.replace(str(out), "$OUT").replace(str(REPO), ".")
    data = str((REPO / ".." / "shared" / "data").resolve())
    return text.replace(data, "../shared/data")


def _ordered(results: dict[str, EvalResult]) -> dict[str, EvalResult]:
    """STD, SAT by increasing eps, AMAT - the paper's row order, whatever the JSON's."""
    def key(name: str) -> tuple[int, float]:
        if name.startswith("SAT"):
            try:
                return 1, float(name[3:])
            except ValueError:
                return 1, 0.0
        return {"STD": (0, 0.0), "AMAT": (2, 0.0)}.get(name, (3, 0.0))
    return {k: results[k] for k in sorted(results, key=key)}


def clean_metrics(results: dict[str, EvalResult]) -> list[str]:
    """Every clean metric the task computed (TVDI for Table 4, SDR, mAP50, IoU...)."""
    names = sorted({m for r in results.values() for m in r.clean})
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k, r in results.items():
        lines.append(f"| {k} | " + " | ".join(_fmt(r.clean.get(m), 4) for m in names) + " |")
    return lines


def claims(results: dict[str, EvalResult], times: dict[str, float | None], which: str = "AMAT") -> list[str]:
    """The paper's three claims (a) robustness vs every SAT, (b) clean vs STD, (c) time vs SAT,
    checked on these results for ``which`` (AMAT or a follow-up variant AMAT_*); one line
    each, with the numbers that decide it."""
    amat = results[which]
    m, higher = amat.metric, amat.higher_is_better
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    sats = [k for k in results if k.startswith("SAT")]
    lines = []
    for attack in amat.noisy:
        a = amat.average(attack)
        beaten = [s for s in sats if better(a, results[s].average(attack))]
        others = ", ".join(f"{s} {results[s].average(attack):.4f}" for s in sats)
        verdict = "holds" if len(beaten) == len(sats) else f"does not hold ({len(beaten)}/{len(sats)} SAT beaten)"
        lines.append(f"(a) {attack.upper()}: {which}'s average {m} over the noise levels is {a:.4f} vs {others} - "
                     f"**{verdict}**.")
        au = amat.auc_robust(attack)
        beaten_auc = [s for s in sats if better(au, results[s].auc_robust(attack))]
        lines.append(f"(a') {attack.upper()} AUC_robust: {which} {au:.4f} vs " + ", ".join(
            f"{s} {results[s].auc_robust(attack):.4f}" for s in sats) +
            f" - {which} ahead of {len(beaten_auc)}/{len(sats)} SAT models.")
    if "STD" in results:
        c_a, c_s = amat.clean[m], results["STD"].clean[m]
        loss = (c_s - c_a) if higher else (c_a - c_s)
        best_sat_clean = (max if higher else min)((results[s].clean[m] for s in sats), default=None)
        lines.append(f"(b) clean {m}: {which} {c_a:.4f}, STD {c_s:.4f} ({which} {'loses' if loss > 0 else 'gains'} "
                     f"{abs(loss):.4f}); best SAT {_fmt(best_sat_clean, 4)} - "
                     + (f"**{which} at or above STD**" if loss <= 0 else f"**{which} below STD**")
                     + (", above every SAT." if best_sat_clean is not None and not better(best_sat_clean, c_a)
                        else ", below the best SAT."))
    sat_times = [times[s] for s in sats if times.get(s)]
    if times.get(which) and sat_times:
        r = times[which] / statistics.mean(sat_times)
        lines.append(f"(c) time per epoch: {which} / mean SAT = {r:.2f} (paper Table 5: 1.00-1.17) - "
                     + ("**holds** (within 1.2)" if r <= 1.2 else "**does not hold**") + ".")
    return lines


def write(dataset: str, out: Path, report_dir: Path) -> Path:
    paper = PAPER[dataset]
    name = EVAL_NAME[dataset]
    eval_json = out / "eval" / f"{name}.json"
    if not eval_json.is_file():
        raise SystemExit(f"{eval_json} is missing: the eval stage has not finished")
    results = _ordered({k: EvalResult.from_dict(v) for k, v in read_json(eval_json).items()})
    budget = read_json(out / "budget.json") if (out / "budget.json").is_file() else {}
    mach = read_json(out / "machine.json") if (out / "machine.json").is_file() else machine()
    delta = f"{best_delta(out / 'grid'):g}"
    assets = report_dir / dataset
    assets.mkdir(parents=True, exist_ok=True)
    for png in (out / "eval").glob(f"{name}*.png"):
        shutil.copyfile(png, assets / png.name)

    times = {}
    epochs = {}
    for method in results:
        secs = epoch_seconds(dataset, out, method, delta)
        epochs[method] = len(secs)
        times[method] = _median_after_first(secs)
    grid_state = read_json(out / "grid" / "grid.json")
    grid_times = {}
    for d in grid_state:
        grid_times[d] = _median_after_first(epoch_seconds(dataset, out, "AMAT", d))
    stages = _stages(out)
    total = sum(s["seconds"] for s in stages)
    start = min(s["start"] for s in stages)
    end = max(s["end"] for s in stages)
    import datetime as _dt

    day = _dt.datetime.fromtimestamp(start, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    L = [f"# {TITLES[dataset]}: STD / SAT / AMAT at CPU scale", ""]
    L += [f"Generated by `python bench/reproduce_report.py write {dataset} ...` from the run of "
          f"`bash bench/reproduce_{dataset}.sh` started {day}; every number below is read from that run's "
          f"files. Paper counterpart: {paper.table}.", ""]
    L += ["## Setting", "",
          f"- machine: {mach['cores']} cores ({mach['cpu']}), GPU: {mach['gpu']}, Python {mach['python']}, "
          f"torch {mach['torch']}",
          f"- wall time of all stages: {total / 60:.1f} min (first stage start to last stage end: "
          f"{(end - start) / 60:.1f} min)",
          "- budget: " + ", ".join(f"{k}={v}" for k, v in budget.items()),
          f"- paper: {paper.model}, {paper.budget}, SAT eps {paper.sat_eps}, xi rule {paper.xi_rule}",
          f"- AMAT's Delta: {delta}, chosen by `amat grid` on the validation split (table below)", ""]
    L += ["## Commands", "", "Run in this order by the script (`$OUT` is its output folder); each line is "
          "a stage with its own log in `$OUT/logs/`.", "", "```"]
    L += [_relpaths(line.rstrip(), out) for line in (out / "commands.txt").read_text().splitlines()
          if line.strip()] + ["```", ""]
    L += ["| stage | minutes |", "|---|---|"] + [f"| {s['stage']} | {s['seconds'] / 60:.1f} |" for s in stages] + [""]
    L += ["## Delta grid (validation split, PGD)", "", (out / "grid" / "grid.md").read_text().strip(), ""]
    L += ["## Test split", "", (out / "eval" / f"{name}.md").read_text().replace("# ", "### ", 1).strip(), "",
          f"![curves]({dataset}/{name}.png)", "", "All clean-data metrics of the test split:", ""]
    L += clean_metrics(results) + [""]
    for png in sorted(assets.glob(f"{name}_*_margins.png")):
        L.append(f"![margins]({dataset}/{png.name})")
    L += ["", "## Seconds per training epoch (Table 5 analogue, same run, same machine)", "",
          "| method | epochs | median s/epoch (first epoch left out) | x STD | x mean SAT | paper s/epoch (GPU) |", "|---|---|---|---|---|---|"]
    sat_mean = statistics.mean([t for k, t in times.items() if k.startswith("SAT") and t]) if any(
        t for k, t in times.items() if k.startswith("SAT")) else None
    for method, t in times.items():
        if method.startswith("AMAT_"):
            continue  # follow-up variants: run later, not necessarily alone on the machine
        col = {"STD": 0, "AMAT": 2}.get(method, 1)
        L.append(f"| {method} | {epochs[method]} | {_fmt(t, 2)} | "
                 f"{_fmt(t / times['STD'] if t and times.get('STD') else None, 2)} | "
                 f"{_fmt(t / sat_mean if t and sat_mean else None, 2)} | {paper.seconds[col]} |")
    for d, t in grid_times.items():
        L.append(f"| AMAT Delta={d} (grid) | - | {_fmt(t, 2)} | "
                 f"{_fmt(t / times['STD'] if t and times.get('STD') else None, 2)} | "
                 f"{_fmt(t / sat_mean if t and sat_mean else None, 2)} | |")
    gpu_hours = paper.epochs * sum(paper.seconds[i] * n for i, n in ((0, 1), (1, len(paper.sat_eps.split(","))),
                                                                     (2, 1))) / 3600
    L += ["", f"GPU budget for the paper's setting: {paper.epochs} epochs x Table 5's seconds per epoch for "
          f"STD + {len(paper.sat_eps.split(','))} SAT + 1 AMAT run = {gpu_hours:.1f} GPU hours of training "
          "(plus the Delta grid and the 100-step evaluation).", ""]
    L += ["## The paper's claims on this run", ""] + [f"- {c}" for c in claims(results, times)] + [""]
    variants = [k for k in results if k.startswith("AMAT_")]
    if variants:
        L += ["## Follow-ups (paper Appendix A and section 2: Delta, xi rule, PGD steps)", "",
              "Each variant changes one setting of the grid-selected AMAT run and keeps the rest (budget, "
              "seed, start weights); it is trained by a one-point `amat grid` (folder `$OUT/followup/NAME`) "
              "and evaluated in the same `amat eval` call as the models above.", ""]
        for v in variants:
            L += [f"- {c}" for c in claims(results, times, v) if c.startswith(("(a) ", "(b)"))]
        L.append("")
    path = report_dir / f"{dataset}.md"
    atomic_write_text(path, "\n".join(L) + "\n")
    atomic_write_json(report_dir / dataset / "summary.json", {
        "delta": delta, "seconds_per_epoch": times, "stages_minutes": total / 60,
        "claims": claims(results, times),
        "results": {k: r.to_dict() for k, r in results.items()}})
    print(f"wrote {path}")
    return path


def overview(report_dir: Path) -> str:
    """The generated part of docs/results/README.md: this run's rows next to the paper's."""
    L = ["| dataset | method | clean | PGD avg | IFGSM avg | AUC_robust (PGD) | s/epoch | paper: clean / PGD avg / "
         "IFGSM avg |", "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for dataset in ("hippocampus", "isbi", "bccd"):
        f = report_dir / dataset / "summary.json"
        if not f.is_file():
            L.append(f"| {dataset} | (not run yet) | | | | | | |")
            continue
        summ = read_json(f)
        results = _ordered({k: EvalResult.from_dict(v) for k, v in summ["results"].items()})
        for name, r in results.items():
            m = r.metric
            paper = PAPER_ROWS[dataset].get(name)
            L.append(f"| {dataset} | {name} | {r.clean[m]:.4f} | {r.average('pgd'):.4f} | {r.average('ifgsm'):.4f} | "
                     f"{r.auc_robust('pgd'):.4f} | {_fmt(summ['seconds_per_epoch'].get(name), 2)} | "
                     + (" / ".join(f"{v:g}" for v in paper) if paper else "-") + " |")
        verdicts += [f"- {dataset}: {c}" for c in summ["claims"]]
    return "\n".join(L + ["", "Claims, as checked by the generator on each run:", ""] + verdicts)


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
        atomic_write_json(out / "budget.json", dict(a.split("=", 1) for a in argv[2:]))
    elif cmd == "plans":
        make_plans(Path(argv[1]), int(argv[2]))
    elif cmd == "best-delta":
        print(f"{best_delta(Path(argv[1])):g}")
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
