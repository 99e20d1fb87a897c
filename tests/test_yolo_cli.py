"""Real Ultralytics runs through the real `amat` console script, in subprocesses, on
generated detection data (CPU, imgsz 64): offline training with plots, resume, bad input,
calibration, the adversarial validator, and a BCCD smoke test."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"
AMAT = Path(sys.executable).with_name("amat")
COMMON = ["imgsz=64", "batch=8", "workers=0", "device=cpu", "pretrained=False", "seed=0"]
FAST_ADV = ["--adv-steps", "3", "--adv-refine-steps", "3"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo_cli")
    from amat_hooks.integrations.ultralytics.synth import make_dataset

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
    assert rc == 2 and "unknown --adv mode 'bogus'" in out and "none, sat, amat" in out
    rc, out = amat([*base, "--adv", "amat", "--adv-step", "0"], work["root"], check=False)
    assert rc == 2 and "--adv-step must be > 0" in out
    rc, out = amat([*base, "--adv", "amat", "--adv-step", "-1"], work["root"], check=False)
    assert rc == 2 and "--adv-step must be > 0" in out
    rc, out = amat([*base, "--adv", "amat"], work["root"], check=False)
    assert rc == 2 and "needs a step size" in out and "--adv-step" in out
    rc, out = amat([*base, "--adv-step", "1"], work["root"], check=False)
    assert rc == 2 and "without --adv" in out
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
    from amat_hooks.integrations.ultralytics.synth import make_dataset

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
    m = side["engine"]["policy"]["margins"]
    assert side["epoch"] == 1 and len(m["ids"]) == 12 and m["updates"] == 24
    assert any(abs(v - 0.5) > 1e-6 for v in m["values"]), "margins never moved"
    assert all(not i.startswith("/") for i in m["ids"])
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert "amat/margin_mean" in header and "metrics/mAP50-95(P1)" in header
    work["offline_run"] = run


@pytest.mark.slow
def test_sat_training_runs(work):
    run = work["root"] / "runs" / "sat"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d2']}", "epochs=1", *COMMON,
          f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
          "--adv", "sat", "--adv-eps", "2", "--adv-steps", "3"], work["root"])
    side = _sidecar(run)
    assert side["config"]["mode"] == "sat" and side["engine"]["policy"]["config"]["eps"] == 2.0
    assert "margins" not in side["engine"]["policy"]


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
    assert saved["epoch"] < 3, "run finished before it could be interrupted"
    margins = saved["engine"]["policy"]["margins"]
    digest = hashlib.sha1(json.dumps({"ids": margins["ids"], "values": margins["values"]},
                                     sort_keys=True).encode()).hexdigest()[:16]
    last = run / "weights" / "last.pt"

    # other step size: refused, state left alone
    rc, out = amat(["yolo", "detect", "train", "resume", f"model={last}", "--adv", "amat", "--adv-step", "0.7"],
                   work["root"], check=False)
    assert rc == 2 and "cannot resume the adversarial state" in out and "step 0.5 != 0.7" in out
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
    assert final["epoch"] == 3 and final["config"]["step"] == 0.5
    assert final["engine"]["policy"]["margins"]["updates"] > margins["updates"]


@pytest.mark.slow
def test_calibrate_eval_and_xi_file(work):
    """STD model -> `amat calibrate yolo` (xi) -> `amat eval yolo` (mAP falls as eps grows)
    -> training with --adv-xi-file uses exactly that xi."""
    run = work["root"] / "runs" / "std"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d3']}", "epochs=25", *COMMON,
          "nbs=8", "warmup_epochs=1", f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
          "close_mosaic=0",
          "--adv", "none"], work["root"], timeout=500)
    best = run / "weights" / "best.pt"
    assert not (run / "weights" / "amat_state.json").exists()  # --adv none is plain Ultralytics
    xi_file = work["root"] / "xi.json"
    rc, out = amat(["calibrate", "yolo", f"model={best}", f"data={work['d3']}", "imgsz=64", "--out", xi_file],
                   work["root"])
    cal = json.loads(xi_file.read_text())
    assert cal["n"] == 32 and cal["rule"] == "mean+2std"
    for x, m, s in zip(cal["xi"], cal["mean"], cal["std"]):
        assert abs(x - (m + 2 * s)) < 1e-4 * max(1.0, x) and s > 0
    res_file = work["root"] / "eval.json"
    amat(["eval", "yolo", f"model={best}", f"data={work['d3']}", "imgsz=64", "batch=8", "plots=False",
          "--levels", "0,0.1,0.3", "--steps", "5", "--out", res_file], work["root"])
    res = {float(k): v["mAP50-95"] for k, v in json.loads(res_file.read_text())["results"].items()}
    assert res[0.0] > 0.05, f"the STD model learned nothing: {res}"
    assert res[0.0] > res[0.1] > res[0.3], res  # stronger noise, lower mAP

    xi_run = work["root"] / "runs" / "xi"
    amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['d3']}", "epochs=1", *COMMON,
          f"project={xi_run.parent}", f"name={xi_run.name}", "val=False", "plots=False",
          "--adv", "amat", "--adv-step", "0.5", "--adv-xi-file", xi_file, *FAST_ADV], work["root"])
    side = _sidecar(xi_run)
    assert side["config"]["xi"] == pytest.approx(cal["xi"])
    assert [side["summary"][f"xi_{k}"] for k in range(3)] == pytest.approx(cal["xi"])


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
    m = _sidecar(run)["engine"]["policy"]["margins"]
    assert len(m["ids"]) == 20 and all(i.startswith("images/train/BloodImage_") for i in m["ids"])
