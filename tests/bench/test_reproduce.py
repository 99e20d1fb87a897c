"""CI-sized runs of the committed real-data reproductions (bench/reproduce_*.sh).

Each test runs the real script end to end - the same user commands (nnUNetv2_train, amat
yolo, amat run, amat grid, amat eval) - on a handful of real images/cases for one epoch,
then checks that the generated results page is well formed: every method in the table,
the Delta grid, the per-epoch timing rows, the plots and the paper's claims evaluated.
Skipped with a reason where ../shared/data is absent.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


def _run(script: str, out: Path, report: Path, **budget: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAT_", "nnUNet_"))}
    env.update(budget, REPORT=str(report), AMAT_DATA=str(DATA), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    # the limit only catches a hang: CI runs the whole suite in ~33 min, yet on a machine shared with a
    # reproduction run the Hippocampus one passed 1500 s (one validation case took 218 s)
    p = subprocess.run(["bash", str(REPO / "bench" / script), str(out)], env=env, capture_output=True,
                       text=True, timeout=3600, check=False)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _check_page(report: Path, dataset: str, methods: list[str], metric: str, seeds: list[str]) -> dict:
    page = (report / f"{dataset}.md").read_text()
    for section in ("## Setting", "## Test split", "## AMAT's margins", "## Delta grid",
                    "## Seconds per training epoch", "## The paper's claims on this run", "## Commands"):
        assert section in page, f"{section} missing from {dataset}.md"
    summary = json.loads((report / dataset / "summary.json").read_text())
    assert summary["seeds"] == seeds and sorted(summary["methods"]) == sorted(methods)
    for name, v in summary["methods"].items():
        assert len(v["clean"]) == len(seeds), name
        for attack in ("pgd", "ifgsm", "worst"):
            assert len(v[attack]) == len(seeds) and all(math.isfinite(x) for x in v[attack]), (name, attack)
        assert f"| {name} |" in page
    # the worst case is never better than either attack alone, per seed
    higher = summary["higher_is_better"]
    for v in summary["methods"].values():
        for w, p, i in zip(v["worst"], v["pgd"], v["ifgsm"]):
            assert (w <= min(p, i) + 1e-9) if higher else (w >= max(p, i) - 1e-9)
    # every method has its measured seconds per epoch (Table 5 analogue)
    assert all(summary["seconds_per_epoch"][m] > 0 for m in methods), summary["seconds_per_epoch"]
    if len(seeds) > 1:
        assert " ± " in page
    # the committed run files the page is generated from
    runs = report / dataset / "runs"
    assert list((runs / "stages").glob("*.json")) and (runs / "grid" / "grid.json").is_file()
    big = [f"{f.relative_to(runs)}: {f.stat().st_size} bytes" for f in runs.rglob("*.json") if f.stat().st_size > 500_000]
    assert not big, f"committed run files must stay small (raw per-sample statistics are left out): {big}"
    for seed in seeds:
        training = json.loads((runs / f"seed{seed}" / "training.json").read_text())
        assert training["AMAT"]["boundary"] == "none" and training["AMAT-stop"]["boundary"] == "stop"
        assert training["AMAT"]["history"] and training["AMAT"]["xi_source"].startswith("calibration file")
        assert (runs / f"seed{seed}" / "xi.json").is_file()
    assert any(c.startswith("(a) PGD") for c in summary["claims"]) and any(c.startswith("(b)") for c in
                                                                           summary["claims"])
    assert "$OUT" in page and str(REPO) not in page      # command lines are written portably
    return summary


def _skip_without(sub: str) -> None:
    if not (DATA / sub).is_dir():
        pytest.skip(f"real dataset {DATA / sub} not found (opt-in real-data test)")


def test_reproduce_bccd_ci_sized(tmp_path):
    _skip_without("bccd")
    out, report = tmp_path / "run", tmp_path / "docs"
    budget = dict(PRE_EPOCHS="1", EPOCHS="1", IMGSZ="64", BATCH="8", FRACTION="0.05", ADV_STEPS="1", PGD_STEPS="2",
                  IFGSM_STEPS="1", SEEDS="0 1", XI_PASSES="1")
    _run("reproduce_bccd.sh", out, report, **budget)
    saved = json.loads((out / "budget.json").read_text())
    assert saved["XI_PASSES"] == "1" and json.loads((out / "seed0" / "xi.json").read_text())["source"] == {
        "model": f"{out}/seed0/yolo/pretrain/weights/last.pt", "data": f"{out}/data/bccd.yaml", "split": "train",
        "images": 294, "augmented_passes": 1, "mode": "train (augmented)"}   # all 294 (fraction: training only)
    assert "xi scored on 1 augmented pass(es) of the training images in train mode" in (
        report / "bccd.md").read_text()
    assert saved["LEVELS"] == "1,2,3" and saved["SAT_EPS"] == "0.2,2"   # paper levels scaled by 64/320
    summary = _check_page(report, "bccd", ["STD", "SAT0.2", "SAT2", "AMAT", "AMAT-stop"], "mAP50-95", ["0", "1"])
    assert summary["delta"] in ("0.4", "0.7")
    # resumable: a second run skips every finished stage
    p = _run("reproduce_bccd.sh", out, report, **budget)
    # convert, the first seed's pretrain + calibrate before the grid, the grid, 8 stages per seed
    assert p.stdout.count("done earlier, skipped") == 1 + 2 + 1 + 2 * 8, p.stdout
    # a later session without the run folder goes on from the committed files: the grid and
    # both finished seeds are taken over, only the data conversion runs again
    p = _run("reproduce_bccd.sh", tmp_path / "fresh", report, **budget)
    assert "continuing from the committed results" in p.stdout and "seed 0, seed 1" in p.stdout, p.stdout
    assert p.stdout.count("done earlier, skipped") == 2 + 1 + 2 * 8 and "convert: started" in p.stdout, p.stdout
    assert json.loads((report / "bccd" / "summary.json").read_text())["seeds"] == ["0", "1"]


def test_reproduce_hippocampus_ci_sized(tmp_path):
    _skip_without("msd_hippocampus")
    out, report = tmp_path / "run", tmp_path / "docs"
    _run("reproduce_hippocampus.sh", out, report, SPLIT="6,2,2", PRE_EPOCHS="1", EPOCHS="2", ITERS="2", BATCH="8",
         ADV_STEPS="1", SAT_EPS="1,5", DELTAS="0.5,1", MAX_CASES="2", PGD_STEPS="2", IFGSM_STEPS="1", SEEDS="0", GRID_FROM="")   # empty: its own grid, not the committed one
    plans = json.loads((out / "nnUNet_preprocessed" / "Dataset004_Hippocampus" / "nnUNetPlans_b8.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] == 8
    summary = _check_page(report, "hippocampus", ["STD", "SAT1", "SAT5", "AMAT", "AMAT-stop"], "ADI", ["0"])
    assert "mce" in summary["methods"]["AMAT"]


def test_reproduce_isbi_ci_sized(tmp_path):
    _skip_without("isbi2015_ceph")
    out, report = tmp_path / "run", tmp_path / "docs"
    _run("reproduce_isbi.sh", out, report, H="64", W="48", PRE_EPOCHS="1", EPOCHS="1", ADV_STEPS="1", TRAIN_IDS="1-4",
         VAL_IDS="151-152", CAL_IMAGES="4", MAX_IMAGES="2", PGD_STEPS="2", IFGSM_STEPS="1", SEEDS="0")
    summary = _check_page(report, "isbi", ["STD", "SAT0.32", "SAT0.96", "AMAT", "AMAT-stop"], "MRE", ["0"])
    xi = json.loads((out / "seed0" / "xi.json").read_text())
    assert xi["kind"] == "amat-hooks xi" and len(xi["xi"]["mean+2std"]) == 3 and xi["rule"] == "mean+2std"
    assert summary["higher_is_better"] is False


def _load_report_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("reproduce_report", REPO / "bench" / "reproduce_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_report"] = module     # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _stage(folder: Path, name: str, status: int = 0) -> None:
    (folder / "stages").mkdir(parents=True, exist_ok=True)
    (folder / "stages" / f"{name}.json").write_text(json.dumps({"stage": name, "seconds": 1.0, "status": status}))


def test_restore_takes_over_finished_seeds_and_the_grid_only(tmp_path):
    """Files written by hand: seed 0 finished, seed 1 stopped after training, seed 2 failed."""
    report = _load_report_module()
    runs, out = tmp_path / "runs", tmp_path / "out"
    (runs / "grid").mkdir(parents=True)
    (runs / "grid" / "grid.json").write_text("{}")
    (runs / "budget.json").write_text(json.dumps({"EPOCHS": "6", "SEEDS": "0 1 2"}))
    for name in ("convert", "grid", "s0_pretrain", "s0_train_AMAT", "s0_eval", "s1_pretrain", "s1_train_AMAT"):
        _stage(runs, name)
    _stage(runs, "s2_eval", status=1)
    (out / "stages").mkdir(parents=True)
    (out / "budget.json").write_text(json.dumps({"EPOCHS": "6", "SEEDS": "1 2"}))   # other seeds: fine
    assert report.restore("bccd", out, runs) == ["the Delta grid", "seed 0"]
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == ["grid", "s0_eval", "s0_pretrain",
                                                                       "s0_train_AMAT"]
    assert (out / "grid" / "grid.json").is_file()
    assert report.restore("bccd", out, runs) == []      # nothing twice
    other = tmp_path / "other"
    (other / "stages").mkdir(parents=True)
    (other / "budget.json").write_text(json.dumps({"EPOCHS": "12", "SEEDS": "0 1 2"}))
    with pytest.raises(SystemExit, match="EPOCHS: 6 there, 12 now"):
        report.restore("bccd", other, runs)
    assert not list((other / "stages").glob("*.json"))


def test_budget_keeps_every_seed_run_in_the_folder(tmp_path):
    """SEEDS=2 in a folder that already ran 0 and 1 adds seed 2 to the record (in the run
    folder and in the committed copy), instead of replacing it; the other keys are the new ones."""
    report = _load_report_module()
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert report.main(["budget", str(out), "EPOCHS=3", "SEEDS=0 1"]) == 0
    assert report.main(["budget", str(out), "EPOCHS=3", "SEEDS=10 2"]) == 0
    assert json.loads((out / "budget.json").read_text()) == {"EPOCHS": "3", "SEEDS": "0 1 2 10"}
    runs.mkdir()
    (runs / "budget.json").write_text(json.dumps({"EPOCHS": "3", "SEEDS": "0 5"}))
    report.collect("isbi", out, runs)
    assert json.loads((runs / "budget.json").read_text()) == {"EPOCHS": "3", "SEEDS": "0 1 2 5 10"}


def _result(report, clean: float, pgd: float):
    return report.EvalResult(task="t", metric="MRE", higher_is_better=False, levels=[1.0], clean={"MRE": clean},
                             noisy={"pgd": {1.0: {"MRE": pgd}}}, batches=1, seconds=1.0)


def test_claims_need_two_seeds_to_be_judged(tmp_path):
    """One seed has no spread: the claim lines say so instead of calling a 0.1 mm gap a result.
    Two seeds: AMAT 3.0/3.2 vs SAT 4.0/4.2 under PGD (gap 1.0 > stdev 0.141) holds; clean
    AMAT 2.0/2.2 vs STD 1.9/2.1 (0.1 worse, stdev 0.141) is within noise."""
    report = _load_report_module()
    one = {"STD": [_result(report, 1.9, 4.1)], "SAT1": [_result(report, 2.5, 4.0)],
           "AMAT": [_result(report, 2.0, 3.9)]}
    lines = report.claims(one, {})
    assert lines[0].endswith("**not judged (one seed)**: a claim needs at least 2 seeds.") and "(spread 0.0000)" in lines[0]
    assert lines[1] == "(b) clean MRE: AMAT vs STD -0.1000 (spread 0.0000) - **not judged (one seed)**."
    two = {"STD": [_result(report, 1.9, 5.0), _result(report, 2.1, 5.2)],
           "SAT1": [_result(report, 2.5, 4.0), _result(report, 2.7, 4.2)],
           "AMAT": [_result(report, 2.0, 3.0), _result(report, 2.2, 3.2)]}
    lines = report.claims(two, {})
    assert "SAT1: +1.0000 (spread 0.1414) holds" in lines[0] and lines[0].endswith("**holds** against every SAT.")
    assert lines[1] == "(b) clean MRE: AMAT vs STD -0.1000 (spread 0.1414) - **within noise** (not shown to be below STD)."
    # clean MRE 1.0 mm lower than STD's (better, beyond the spread) holds; 1.0 mm higher does not
    two["AMAT"] = [_result(report, 0.9, 3.0), _result(report, 1.1, 3.2)]
    assert report.claims(two, {})[1] == ("(b) clean MRE: AMAT vs STD +1.0000 (spread 0.1414) - "
                                         "**holds** (above STD by more than the spread).")
    two["AMAT"] = [_result(report, 2.9, 3.0), _result(report, 3.1, 3.2)]
    assert report.claims(two, {})[1] == ("(b) clean MRE: AMAT vs STD -1.0000 (spread 0.1414) - "
                                         "**does not hold** (below STD by more than the spread).")


def test_margin_lines_state_updates_per_sample():
    """A margin grows by at most Delta per update, so the page states the updates per sample:
    4800 updates over 3452 samples = 1.39 (hand-computed), median 0.5 below SAT eps 1,
    and the per-sample-SAT line because the 90th percentile 0.5 is at Delta."""
    report = _load_report_module()
    history = [{"margin_mean": 0.537, "margin_updates": 800.0, "margin_count": 753.0, "margin_q90": 0.5},
               {"margin_mean": 0.744, "margin_updates": 4800.0, "margin_count": 3452.0, "margin_q90": 0.5}]
    training = {"0": {"AMAT": {"history": history, "margins_final": {"median": 0.5}}}}
    lines = report.margin_lines(training, [1.0, 5.0], 0.5)
    assert lines[2] == ("- seed 0: 0.537, 0.744 - median 0.5 < smallest SAT eps 1; "
                        "4800 margin updates over 3452 samples updated (1.39 per sample)")
    assert lines[4].startswith("On every seed at least 90 % of AMAT's margins ended at or below Delta = 0.5")
    assert "(README.md#how-this-differs" in lines[4]
    # a page one folder down (docs/results/hippocampus_short/) links the results README above it
    below = report.margin_lines(training, [1.0, 5.0], 0.5, report._results_readme(report.REPO / "docs" / "results" / "x"))
    assert "(../README.md#how-this-differs" in below[4]
    # a page outside the repository (a test's tmp folder) must not print this machine's paths
    assert report._results_readme(Path("/tmp/some/report")) == "docs/results/README.md"


def test_margin_check_allows_float32_rounding_only():
    """A float32 margin (1.5 + 0.5) / 2 stored as 0.9999999925 reaches SAT eps 1; 0.99 does not."""
    report = _load_report_module()
    history = [{"margin_mean": 1.133, "margin_updates": 16000.0, "margin_count": 6286.0, "margin_q90": 2.0}]
    for median, verdict in ((0.9999999925494194, "median 1 >= smallest SAT eps 1"),
                            (0.99, "median 0.99 < smallest SAT eps 1")):
        training = {"0": {"AMAT": {"history": history, "margins_final": {"median": median}}}}
        assert verdict in report.margin_lines(training, [1.0, 5.0], 0.5)[2]


def test_commands_name_the_output_folder_whole():
    """$OUT replaces the whole output folder name (hippocampus_long too), the repo becomes '.'."""
    report = _load_report_module()
    repo = str(report.REPO)
    cmd = (f"amat eval --models STD=nnUNetTrainerSTD@{repo}/runs/reproduce/hippocampus_long/seed0/results/STD,"
           f"AMAT=x@/tmp/a/runs/reproduce/isbi/seed1 --out {repo}/runs/reproduce/bccd.v2/eval {repo}/bench/x.py")
    assert report._relpaths(cmd) == ("amat eval --models STD=nnUNetTrainerSTD@$OUT/seed0/results/STD,"
                                     "AMAT=x@$OUT/seed1 --out $OUT/eval ./bench/x.py")


def test_take_grid_copies_the_grid_and_the_page_names_its_source(tmp_path):
    """GRID_FROM: the grid files of another run are copied (best Delta read back from them: 1,
    whose ADI 0.3 beats 0.2 by hand), its budget is recorded, and the Delta line names the
    source run and the budget the grid was made at. A folder without a grid is refused."""
    report = _load_report_module()
    src = tmp_path / "runs"
    (src / "grid").mkdir(parents=True)
    point = {"metric": "ADI", "higher_is_better": True, "levels": [1.0], "clean": {"ADI": 0.5},
             "noisy": {"pgd": {"1.0": {"ADI": 0.2}}}, "batches": 1, "seconds": 1.0, "task": "nnunet"}
    better = dict(point, noisy={"pgd": {"1.0": {"ADI": 0.3}}})
    (src / "grid" / "grid.json").write_text(json.dumps({"0.5": {"result": point}, "1": {"result": better}}))
    (src / "grid" / "grid.md").write_text("| Delta | AUC |\n")
    (src / "budget.json").write_text(json.dumps({"EPOCHS": "6", "PRE_EPOCHS": "12", "DELTAS": "0.5,1"}))
    grid = tmp_path / "out" / "grid"
    source = report.take_grid(str(src), grid)
    assert sorted(p.name for p in grid.iterdir()) == ["grid.json", "grid.md", "grid_source.json"]
    assert report.best_delta(grid) == 1.0
    assert json.loads(source.read_text())["budget"]["EPOCHS"] == "6"
    line = report._delta_line("1", source)
    assert f"taken over (GRID_FROM): `{src}`, made at PRE_EPOCHS=12, EPOCHS=6, DELTAS=0.5,1;" in line
    assert report._delta_line("1", tmp_path / "none.json").endswith("on the validation split (table below)")
    with pytest.raises(SystemExit, match="grid.json does not exist; point GRID_FROM"):
        report.take_grid(str(tmp_path / "out" / "grid"), tmp_path / "other")   # the grid, not its runs/


def test_evaluation_subset_is_stated():
    """MAX_CASES=8 with SPLIT=208,17,35 scores 8 of the 35 test cases: the caption says so;
    MAX_CASES=0 (all) and budgets without it add nothing."""
    report = _load_report_module()
    assert report._subset({"MAX_CASES": "8", "SPLIT": "208,17,35"}) == "; a subset: MAX_CASES=8 of the 35 test cases"
    assert report._subset({"MAX_CASES": "0", "SPLIT": "208,17,35"}) == ""
    assert report._subset({"EPOCHS": "3"}) == ""


def test_paired_verdicts_by_hand():
    """Issue 29: per-seed differences to AMAT and the paired t-test. Differences 1, 2, 3:
    mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 degrees of freedom, two-sided p = 0.0742
    (scipy's ttest_rel on the same pairs agrees)."""
    import math

    from scipy import stats

    rr = _load_report_module()

    assert rr.paired_p([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-4)
    a, b = [3.0, 5.0, 7.5], [2.0, 3.0, 4.5]
    assert rr.paired_p([x - y for x, y in zip(a, b)]) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert rr.paired_p([0.5]) is None and rr.paired_p([0.2, 0.2]) == 0.0
    assert math.isclose(rr.paired_p([0.0, 0.0]), 1.0)


def test_yolov5_epoch_seconds_are_read_from_the_training_bar(tmp_path):
    """The classic script's log: tqdm states joined by \\r and ESC[K; validation bars ('Class') and
    unfinished states are not epochs; times as the bar prints them (13.9s, 1:05)."""
    rr = _load_report_module()
    bar = "      {e}/2         0G     0.11     0.12    0.035        443        160: {p}% ━━━━ {n}/19 1.4it/s {t}"
    log = tmp_path / "s0_train_AMAT.log"
    log.write_text("\r".join([bar.format(e=0, p=5, n=1, t="1.5s"), bar.format(e=0, p=100, n=19, t="13.9s"),
                              "                 Class     Images  Instances: 100% ━━━━ 2/2 2.7it/s 0.7s",
                              "\x1b[K" + bar.format(e=1, p=100, n=19, t="1:05")]) + "\n")
    assert rr._yolov5_epochs(log) == [13.9, 65.0]


def test_timing_heading_names_stages_of_other_seeds_that_overlapped():
    rr = _load_report_module()
    alone = [{"stage": "s0_train_AMAT", "start": 0, "end": 10}, {"stage": "s1_train_AMAT", "start": 10, "end": 20}]
    assert rr._alone(alone, "0") == "stages run alone"
    side = [{"stage": "s0_train_AMAT", "start": 0, "end": 10}, {"stage": "s1_pretrain", "start": 9, "end": 30}]
    assert rr._alone(side, "0").startswith("NOT alone: 1 stage(s) of other seeds ran at the same time (s1_pretrain)")
