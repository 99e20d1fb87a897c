"""Real Ultralytics runs through the real `amat` console script, in subprocesses, on
generated detection data (CPU, imgsz 64): offline training with plots, resume, bad input,
calibration, `amat eval yolo` (paper-style report, batched levels == per-level), `amat grid
yolo` (resume does not retrain), and a BCCD smoke test."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

REPO = Path(__file__).resolve().parents[3]
BCCD = REPO.parent / "shared" / "data" / "bccd"
AMAT = Path(sys.executable).with_name("amat")
COMMON = ["imgsz=64", "batch=8", "workers=0", "device=cpu", "pretrained=False", "seed=0"]
FAST_ADV = ["--adv-steps", "3", "--adv-refine-steps", "3"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo_cli")
    from amat_hooks.zoo.detection_data import make_dataset

    return {"root": root,
            "d1": make_dataset(root / "d1", n_train=16, n_val=4, seed=1),
            "d2": make_dataset(root / "d2", n_train=12, n_val=4, seed=2),
            "d3": make_dataset(root / "d3", n_train=32, n_val=16, seed=1)}


def _env(root: Path, guard: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAT_", "YOLO_"))}
    env["YOLO_CONFIG_DIR"] = str(root / "ultralytics_cfg")  # starts empty: no pre-downloaded fonts
    env["PYTHONUNBUFFERED"] = "1"
    if guard is not None:
        env["AMAT_NETWORK_GUARD"] = str(guard)
    return env


def amat(args, root, guard=None, timeout=400, check=True):
    cmd = [str(AMAT) if AMAT.exists() else sys.executable, *([] if AMAT.exists() else ["-m", "amat_hooks.cli"]),
           *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(root, guard), cwd=root)
    out = r.stdout + r.stderr
    if check:
        assert r.returncode == 0, out[-4000:]
    return r.returncode, out


def _sidecar(run: Path) -> dict:
    return json.loads((run / "weights" / "amat_state.json").read_text())


# -- bad input: clear errors, no crash ---------------------------------------------------------
def test_bad_adv_settings_are_reported(work):
    base = ["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d1']}", "epochs=1", *COMMON]
    rc, out = amat([*base, "--adv", "bogus"], work["root"], check=False)
    assert rc == 2 and "unknown mode 'bogus' for --adv" in out and "none, sat, amat" in out
    rc, out = amat([*base, "--adv", "amat", "--adv-step", "0"], work["root"], check=False)
    assert rc == 2 and "--adv-step must be > 0" in out
    rc, out = amat([*base, "--adv", "amat", "--adv-step", "-1"], work["root"], check=False)
    assert rc == 2 and "--adv-step must be > 0" in out
    rc, out = amat([*base, "--adv", "amat"], work["root"], check=False)
    assert rc == 2 and "needs a step size" in out and "--adv-step" in out
    rc, out = amat([*base, "--adv-step", "1"], work["root"], check=False)
    assert rc == 2 and "without --adv" in out
    rc, out = amat([*base, "--adv", "amat", "--adv-step", "1", "--adv-boundary", "bogus"], work["root"], check=False)
    assert rc == 2 and "unknown --adv-boundary 'bogus'; choose one of: none, stop" in out
    rc, out = amat(["yolo", "detect", "train", "model=yolov5s.pt", f"data={work['d1']}", "--adv", "none"],
                   work["root"], check=False)  # Ultralytics would download yolov5su.pt
    assert rc == 2 and "never downloads weights" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("words", [["segment", "train", "model=yolov8n-seg.yaml"],
                                   ["train", "model=yolov8n-pose.yaml"]])
def test_non_detection_tasks_are_not_supported_yet(work, words):
    rc, out = amat(["yolo", *words, f"data={work['d1']}", "epochs=1", *COMMON, "--adv", "amat", "--adv-step", "1"],
                   work["root"], check=False)
    assert rc == 2 and "not supported yet" in out and "Traceback" not in out


def test_image_without_labels_is_refused(work):
    from amat_hooks.zoo.detection_data import make_dataset

    data = make_dataset(work["root"] / "nolabels", n_train=8, n_val=2, seed=3, unlabeled=2)
    rc, out = amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={data}", "epochs=1", *COMMON,
                    f"project={work['root'] / 'runs'}", "name=nolabels", "--adv", "amat", "--adv-step", "1"],
                   work["root"], check=False)
    assert rc == 2 and "2 training image(s) have no label file" in out and "EMPTY .txt" in out


# -- the guard works: Ultralytics' own font check reaches for the network ------------------
def test_guard_catches_ultralytics_font_download(work, tmp_path):
    guard = tmp_path / "net.txt"
    code = "import amat_hooks\nfrom ultralytics.utils.checks import check_font\nprint(check_font('Arial.ttf'))"
    env = _env(tmp_path, guard)
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert guard.exists() and guard.read_text().strip(), "control: plain Ultralytics should try to download"


# -- a full offline run with plots -------------------------------------------------------------
@pytest.mark.slow
def test_amat_training_is_offline_with_plots_and_margins_move(work, tmp_path):
    guard = tmp_path / "net.txt"
    run = work["root"] / "runs" / "offline"
    rc, out = amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d2']}", "epochs=2", *COMMON,
                    f"project={run.parent}", f"name={run.name}", "plots=True",
                    "--adv", "amat", "--adv-step", "0.5", *FAST_ADV, "--adv-val-eps", "1", "--adv-val-steps", "2"],
                   work["root"], guard=guard)
    assert not guard.exists() or guard.read_text() == "", f"network access: {guard.read_text()}"
    for plot in ("labels.jpg", "train_batch0.jpg", "val_batch0_pred.jpg", "results.png", "confusion_matrix.png"):
        assert (run / plot).is_file(), plot
    side = _sidecar(run)
    m = side["policy"]["margins"]
    assert side["epochs"] == 2 and len(m["ids"]) == 12 and m["updates"] == 24
    # the paper's semantics by default, xi's source said in the log and kept in the sidecar
    pol = side["policy"]["config"]
    assert pol["boundary"] == "none" and pol["xi_source"].startswith("online estimate")
    assert "amat calibrate yolo" in out and "xi = online estimate" in out
    assert [h["epoch"] for h in side["history"]] == [0, 1] and side["history"][1]["margin_mean"] > 0
    assert any(abs(v - 0.5) > 1e-6 for v in m["values"]), "margins never moved"
    assert all(not i.startswith("/") for i in m["ids"])
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert "metrics/margin_mean" in header and "metrics/mAP50-95(P1)" in header
    work["offline_run"] = run


@pytest.mark.slow
def test_sat_training_runs(work):
    run = work["root"] / "runs" / "sat"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d2']}", "epochs=1", *COMMON,
          f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
          "--adv", "sat", "--adv-eps", "2", "--adv-steps", "3"], work["root"])
    side = _sidecar(run)
    assert side["config"]["mode"] == "sat" and side["policy"]["config"]["eps"] == 2.0
    assert "margins" not in side["policy"]
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert {"train/clean_box_loss", "train/noisy_dfl_loss"} <= set(header)  # SAT: the two losses, no margins
    assert "metrics/margin_mean" not in header


@pytest.mark.slow
def test_resume_restores_margins_exactly_and_refuses_foreign_sidecar(work):
    run = work["root"] / "runs" / "resume"
    cmd = [str(AMAT), "yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d1']}", "epochs=4", *COMMON,
           f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
           "--adv", "amat", "--adv-step", "0.5", *FAST_ADV]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(work["root"]),
                            cwd=work["root"])
    side_file = run / "weights" / "amat_state.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if side_file.exists():
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert side_file.exists(), "no sidecar was written before the run ended"
    saved = json.loads(side_file.read_text())
    assert saved["epochs"] < 4, "run finished before it could be interrupted"
    margins = saved["policy"]["margins"]
    # the documented digest: SHA-256 of [ids, exact float64 bits of the values], 16 hex digits
    digest = hashlib.sha256(json.dumps([margins["ids"], [float(v).hex() for v in margins["values"]]],
                                       separators=(",", ":")).encode()).hexdigest()[:16]
    assert saved["digest"] == digest
    last = run / "weights" / "last.pt"

    # other step size: refused, state left alone
    rc, out = amat(["yolo", "detect", "train", "resume", f"model={last}", "--adv", "amat", "--adv-step", "0.7"],
                   work["root"], check=False)
    assert rc == 2 and "cannot resume the adversarial state" in out and "step 0.5 != 0.7" in out
    # the other training semantics: refused with the flags that fix it
    rc, out = amat(["yolo", "detect", "train", "resume", f"model={last}", "--adv", "amat", "--adv-step", "0.5",
                    "--adv-boundary", "stop"], work["root"], check=False)
    assert rc == 2 and "trained with --adv-boundary none" in out and "--adv-force-resume" in out
    # a sidecar from a run on another dataset: refused
    foreign = work["root"] / "runs" / "foreign"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d2']}", "epochs=1", *COMMON,
          f"project={foreign.parent}", f"name={foreign.name}", "val=False", "plots=False",
          "--adv", "amat", "--adv-step", "0.5", *FAST_ADV], work["root"])
    own = side_file.read_bytes()
    shutil.copyfile(foreign / "weights" / "amat_state.json", side_file)
    rc, out = amat(["yolo", "detect", "train", "resume", f"model={last}"], work["root"], check=False)
    assert rc == 2 and "dataset" in out and "another run" in out
    side_file.write_bytes(own)

    # the real resume: settings come from the sidecar, margins restored bit for bit
    rc, out = amat(["yolo", "detect", "train", "resume", f"model={last}"], work["root"])
    assert f"restored {len(margins['ids'])} margins" in out and f"digest {digest}" in out
    final = _sidecar(run)
    assert final["epochs"] == 4 and final["config"]["delta"] == 0.5
    assert final["policy"]["margins"]["updates"] > margins["updates"]


@pytest.fixture(scope="module")
def std_model(work) -> Path:
    """A clean (STD) YOLOv5n trained through `amat yolo ... --adv none` (learns the shapes a bit)."""
    run = work["root"] / "runs" / "std"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d3']}", "epochs=25", *COMMON,
          "nbs=8", "warmup_epochs=1", f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
          "close_mosaic=0",
          "--adv", "none"], work["root"], timeout=500)
    assert not (run / "weights" / "amat_state.json").exists()  # --adv none is plain Ultralytics
    return run / "weights" / "best.pt"


@pytest.mark.slow
def test_calibrate_on_augmented_training_batches(work, std_model):
    """--augmented-passes N scores every training image N times as training sees it (seeded:
    the same command gives the same xi), records it in the xi file, and gives other terms than
    the un-augmented default; a negative N is a one-line error."""
    base = ["calibrate", "yolo", f"model={std_model}", f"data={work['d3']}", "imgsz=64", "batch=8"]
    xi = {}
    for name, extra in (("plain", []), ("aug_a", ["--augmented-passes", "2"]), ("aug_b", ["--augmented-passes", "2"])):
        path = work["root"] / f"xi_{name}.json"
        rc, out = amat([*base, *extra, "--out", path], work["root"])
        xi[name] = json.loads(path.read_text())
    a = xi["aug_a"]
    assert a["n_samples"] == 64 and a["source"]["images"] == 32 and a["source"]["augmented_passes"] == 2
    assert a["source"]["mode"] == "train (augmented)" and "augmented_passes" not in xi["plain"]["source"]
    assert "scoring 2 augmented pass(es) in train mode: mosaic=1.0" in out
    assert a["xi"] == xi["aug_b"]["xi"]  # seeded augmentation: reproducible
    assert a["stats"]["mean"] != pytest.approx(xi["plain"]["stats"]["mean"], rel=1e-3)
    rc, out = amat([*base, "--augmented-passes", "-1"], work["root"], check=False)
    assert rc == 2 and "--augmented-passes must be >= 0 (got -1)" in out


EVAL_FAST = ["--levels", "0.1,0.3", "--pgd-steps", "5", "--ifgsm-steps", "3", "--det-conf", "0.01", "--no-progress"]


@pytest.mark.slow
def test_calibrate_xi_file_and_eval_report(work, std_model):
    """STD model -> `amat calibrate yolo` (xi) -> AMAT training with --adv-xi-file uses exactly
    that xi -> `amat eval yolo` of both side by side: mAP falls as eps grows, the report
    files parse, AMAT's margin histogram is drawn, --resume reuses the results."""
    xi_file = work["root"] / "xi.json"
    rc, out = amat(["calibrate", "yolo", f"model={std_model}", f"data={work['d3']}", "imgsz=64", "--out", xi_file],
                   work["root"])
    cal = json.loads(xi_file.read_text())
    assert cal["kind"] == "amat-hooks xi" and cal["task"] == "yolo" and cal["term_names"] == ["box", "cls", "dfl"]
    assert cal["n_samples"] == 32 and cal["rule"] == "mean+2std" and cal["source"]["images"] == 32
    xi = cal["xi"]["mean+2std"]
    for x, m, s, mean in zip(xi, cal["stats"]["mean"], cal["stats"]["std"], cal["xi"]["mean"]):
        assert abs(x - (m + 2 * s)) < 1e-4 * max(1.0, x) and s > 0 and mean == pytest.approx(m)
    assert f"train with: amat yolo detect train ... --adv amat --adv-step D --adv-xi-file {xi_file}" in out

    xi_run = work["root"] / "runs" / "xi"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d3']}", "epochs=1", *COMMON,
          f"project={xi_run.parent}", f"name={xi_run.name}", "val=False", "plots=False",
          "--adv", "amat", "--adv-step", "0.5", "--adv-xi-file", xi_file, *FAST_ADV], work["root"])
    side = _sidecar(xi_run)
    assert side["config"]["xi"] == pytest.approx(xi) and side["config"]["xi_source"] == f"calibration file {xi_file}"
    assert [side["summary"][f"xi_{k}"] for k in range(3)] == pytest.approx(xi)

    report = work["root"] / "eval"
    cmd = ["eval", "yolo", "--models", f"STD={std_model},AMAT={xi_run / 'weights' / 'last.pt'}",
           f"data={work['d3']}", "imgsz=64", "batch=8", *EVAL_FAST, "--out", report]
    rc, out = amat(cmd, work["root"])
    res = json.loads((report / "robustness.json").read_text())
    assert set(res) == {"STD", "AMAT"}
    std = res["STD"]
    assert std["metric"] == "mAP50-95" and std["levels"] == [0.1, 0.3] and std["batches"] == 2
    for attack in ("pgd", "ifgsm"):
        curve = [std["clean"]["mAP50-95"]] + [std["noisy"][attack][lv]["mAP50-95"] for lv in ("0.1", "0.3")]
        assert curve[0] > 0.05, f"the STD model learned nothing: {curve}"
        assert curve[0] > curve[1] > curve[2], (attack, curve)  # stronger noise, lower mAP
        assert set(std["noisy"][attack]["0.1"]) >= {"mAP50", "IoU", "precision", "recall"}
    rows = list(csv.reader(io.StringIO((report / "robustness.csv").read_text())))
    assert rows[0] == ["Method", "mAP50-95", "P.0.1", "P.0.3", "Avg.", "IF.0.1", "IF.0.3", "Avg.", "AUC_robust"]
    assert [r[0] for r in rows[1:]] == ["STD", "AMAT"]
    assert float(rows[1][1]) == pytest.approx(std["clean"]["mAP50-95"], abs=1e-6)
    md = (report / "robustness.md").read_text()
    assert "| Method | mAP50-95 | P.0.1 |" in md and "| STD |" in md and "| AMAT |" in md
    for png in ("robustness.png", "robustness_AMAT_margins.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not (report / "robustness_STD_margins.png").exists()  # STD has no sidecar
    assert "margin histogram" in out

    before = (report / "robustness.json").read_text()
    rc, out = amat([*cmd, "--resume"], work["root"])
    assert "STD: already evaluated" in out and "AMAT: already evaluated" in out
    assert (report / "robustness.json").read_text() == before


@pytest.mark.slow
def test_batched_levels_equal_per_level_and_ultralytics_val(work, std_model, tmp_path):
    """All levels of a batch in one IFGSM call == one evaluation per level (no random
    start, same seed); an interrupted evaluation resumes to the same numbers; the clean mAP
    equals Ultralytics' own `val` on the same images."""
    from ultralytics import YOLO

    from amat_hooks.evaluation import robustness_eval
    from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask

    task = YoloEvalTask(std_model, work["d3"], imgsz=64, batch=8, det_conf=0.01, workdir=tmp_path)
    levels = [0.1, 0.3]
    state = tmp_path / "state.jsonl"
    batched = robustness_eval(task, levels, attacks=("ifgsm",), ifgsm_steps=3, progress=False, state_path=state)
    lines = state.read_text().splitlines()
    assert len(lines) == 2  # one JSON record per finished batch
    state.write_text(lines[0] + "\n" + lines[1][:40])  # interrupted while writing the second batch
    resumed = robustness_eval(task, levels, attacks=("ifgsm",), ifgsm_steps=3, progress=False, state_path=state,
                              resume=True)
    assert resumed.clean == batched.clean and resumed.noisy == batched.noisy
    for lv in levels:
        single = robustness_eval(task, [lv], attacks=("ifgsm",), ifgsm_steps=3, progress=False)
        assert single.clean == batched.clean
        assert batched.noisy["ifgsm"][lv] == pytest.approx(single.noisy["ifgsm"][lv], abs=1e-6)
    maps = [batched.clean["mAP50-95"]] + batched.curve("ifgsm")
    assert maps[0] > maps[1] > maps[2] > 0, maps  # a real, falling curve (not 0 == 0)
    assert batched.clean["IoU"] > batched.noisy["ifgsm"][0.3]["IoU"] > 0

    m = YOLO(str(std_model)).val(data=str(work["d3"]), imgsz=64, batch=8, rect=False, workers=0, device="cpu",
                                 plots=False, verbose=False, project=str(tmp_path), name="val")
    assert batched.clean["mAP50-95"] == pytest.approx(float(m.box.map), abs=1e-9)
    assert batched.clean["mAP50"] == pytest.approx(float(m.box.map50), abs=1e-9)


def test_eval_bad_input_is_reported(work, tmp_path):
    base = ["eval", "yolo", f"data={work['d1']}", "imgsz=64"]
    rc, out = amat([*base, "--models", f"STD={tmp_path / 'missing.pt'}"], work["root"], check=False)
    assert rc == 2 and "missing.pt not found" in out
    fake = tmp_path / "w.pt"
    fake.write_bytes(b"x")
    rc, out = amat([*base, "--models", f"STD={fake}", "split=test"], work["root"], check=False)
    assert rc == 2 and "split=test is not in" in out and "use split=val or split=test" in out
    rc, out = amat([*base, "--models", f"STD={fake}", "--levels", "0,5"], work["root"], check=False)
    assert rc == 2 and "noise levels must be finite and > 0" in out
    rc, out = amat([*base, "--models", f"STD={fake}", f"model={fake}"], work["root"], check=False)
    assert rc == 2 and "give models as --models NAME=PATH" in out
    rc, out = amat([*base, f"model={fake}"], work["root"], check=False)
    assert rc == 2 and "required: --models" in out
    rc, out = amat(["grid", "yolo", "--deltas", "1", "model=yolov5n.yaml", f"data={work['d1']}", "name=x"],
                   work["root"], check=False)
    assert rc == 2 and "name: the grid sets these itself" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_grid_trains_each_delta_once_and_resumes(work):
    """`amat grid yolo`: one real `amat yolo detect train` per Delta, avg IoU and mAP tables
    on the val split; a second run retrains nothing, and a point that was trained but not
    evaluated (interrupted) is evaluated without retraining."""
    from amat_hooks.zoo.detection_data import make_dataset

    data = make_dataset(work["root"] / "dgrid", n_train=8, n_val=4, seed=4)
    out = work["root"] / "grid"
    cmd = ["grid", "yolo", "--deltas", "1,0.5", f"data={data}", "model=yolov5n.yaml", "epochs=1", *COMMON,
           "val=False", "plots=False", *FAST_ADV, "--levels", "0.1,0.3", "--pgd-steps", "2", "--det-conf", "0.01",
           "--no-progress", "--out", out]
    rc, text = amat(cmd, work["root"])
    assert re.search(r"Delta=0\.5 \(\d/2\): training", text) and re.search(r"Delta=1 \(\d/2\): training", text)
    weights = {d: out / f"delta_{d}" / "train" / "weights" / "last.pt" for d in ("0.5", "1")}
    for d, w in weights.items():
        side = json.loads((w.parent / "amat_state.json").read_text())
        assert side["config"]["mode"] == "amat" and side["config"]["delta"] == float(d)
        assert side["config"]["pgd_steps"] == 3  # the extra --adv-steps reached the training
    state = json.loads((out / "grid.json").read_text())
    assert set(state) == {"0.5", "1"}
    for d in state.values():
        assert d["result"]["metric"] == "IoU" and d["result"]["levels"] == [0.1, 0.3]
        assert set(d["result"]["clean"]) >= {"IoU", "mAP50-95", "mAP50"}
    assert "| Delta | 0 | 0.1 | 0.3 | AUC_robust |" in (out / "grid.md").read_text()
    assert "mAP50-95 on the validation split" in (out / "grid_mAP50-95.md").read_text()

    stamps = {d: w.stat().st_mtime_ns for d, w in weights.items()}
    dropped = state["1"].pop("result")  # as if interrupted after training Delta=1, before its evaluation
    (out / "grid.json").write_text(json.dumps(state))
    rc, text = amat(cmd, work["root"])
    assert "training" not in text, text[-2000:]
    assert "Delta=0.5: done earlier" in text and re.search(r"Delta=1 \(\d/2\): evaluating", text)
    assert {d: w.stat().st_mtime_ns for d, w in weights.items()} == stamps
    again = json.loads((out / "grid.json").read_text())
    assert again["1"]["result"]["clean"] == pytest.approx(dropped["clean"])  # same weights, same numbers


@pytest.mark.slow
@pytest.mark.realdata
def test_bccd_smoke(work):
    if not (BCCD / "BCCD" / "Annotations").is_dir():
        pytest.skip(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")
    out = work["root"] / "bccd"
    rc, text = amat(["bccd", BCCD, out], work["root"])
    assert "train 205, val 87, test 72" in text and "dropped 2 degenerate" in text
    run = work["root"] / "runs" / "bccd"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={out / 'bccd.yaml'}", "epochs=1", *COMMON,
          "fraction=0.1", f"project={run.parent}", f"name={run.name}", "plots=False",
          "--adv", "amat", "--adv-step", "3.5", "--adv-xi-rule", "mean+2std", *FAST_ADV], work["root"])
    m = _sidecar(run)["policy"]["margins"]
    assert len(m["ids"]) == 20 and all(i.startswith("images/train/BloodImage_") for i in m["ids"])
