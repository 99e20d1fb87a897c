"""The classic ultralytics/yolov5 ``train.py``, unmodified, through ``amat run``: the adapter
against the checkout's own ComputeLoss, a plain run vs ``--adv none``, AMAT offline with
epoch lines from the script's epoch loop, and a resume that restores the margins.

Needs a checkout: ``AMAT_YOLOV5_DIR=/path/to/yolov5`` (``git clone
https://github.com/ultralytics/yolov5 && git -C yolov5 checkout 5081342f0``); skipped otherwise.
The tests run a copy without ``.git`` (the script's git-status check would reach the network).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from support import amat_cmd, run

CHECKOUT = os.environ.get("AMAT_YOLOV5_DIR")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    if not CHECKOUT or not (Path(CHECKOUT) / "train.py").is_file():
        pytest.skip("classic YOLOv5 checkout not found: set AMAT_YOLOV5_DIR to a clone of ultralytics/yolov5 "
                    "(git clone https://github.com/ultralytics/yolov5 && git -C yolov5 checkout 5081342f0)")
    dst = tmp_path_factory.mktemp("yolov5") / "yolov5"
    shutil.copytree(CHECKOUT, dst, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from amat_hooks.zoo.detection_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("y5data"), n_train=8, n_val=4, size=64, seed=0)


def train_args(data: Path, project: Path, name: str, epochs: int = 2, *extra: str) -> list[str]:
    return ["python", "train.py", "--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64",
            "--batch", "4", "--epochs", str(epochs), "--workers", "0", "--device", "cpu", "--project", str(project),
            "--name", name, "--noplots", "--exist-ok", *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]


def test_adapter_terms_equal_the_scripts_loss_and_attacks_follow_algorithm_1(checkout, data):
    p = run([sys.executable, str(HERE / "y5_checks.py"), str(checkout), str(data)], checkout, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["dtype"] == "torch.uint8" and r["terms_shape"] == [4, 3]
    # summed per-image box/obj/cls terms = the script's own loss items x batch size (and its loss)
    assert r["sum_vs_items_times_b"] < 1e-4 and r["sum_vs_loss"] < 1e-4
    # the handed batch: 2B float rows at the script's 0..255 scale, every box twice, index shifted by B
    assert r["handed_rows"] == 8 and r["handed_instances"] == 2 * r["instances"] and r["handed_index_max"] == 7
    assert r["handed_float"] and r["handed_scale_ok"]
    assert r["handed_loss_over_clean"] == pytest.approx(2.0, rel=1e-5)  # why the runner halves the gradient
    # SAT: every noise norm equals eps in [0, 1] image space
    assert r["sat_norm_err"] < 1e-4 and r["sat_measured_norm_err"] < 1e-4 and r["sat_in_bounds"]
    # AMAT: E += Delta where every noisy term < xi, else (|x - x~| + E) / 2
    assert r["amat_loose_accepted"] == 4 and r["amat_loose_margin_err"] < 1e-6
    assert r["amat_tight_accepted"] == 0 and r["amat_tight_margin_err"] < 1e-6
    assert r["ids_are_paths"]  # the primary image of each (mosaic) sample


@pytest.mark.slow
def test_adv_none_equals_the_plain_run_and_counts_the_scripts_epochs(checkout, data, tmp_path):
    from amat_hooks.offline import OFFLINE_ENV, provide_fonts

    fonts = tmp_path / "fonts"
    provide_fonts(fonts)  # the plain script would download Arial.ttf: the switches amat applies, by hand
    plain = run([sys.executable] + train_args(data, tmp_path, "plain")[1:], checkout, timeout=600,
                env={**OFFLINE_ENV, "YOLOV5_CONFIG_DIR": str(fonts)})
    assert plain.returncode == 0, plain.stderr[-3000:]
    guard = tmp_path / "net.txt"
    none = run(amat_cmd() + ["run", "--adv", "none", "--"] + train_args(data, tmp_path, "none"), checkout, guard,
               timeout=600)
    assert none.returncode == 0, none.stderr[-3000:]
    assert not guard.exists(), guard.read_text()
    a, b = _rows(tmp_path / "plain" / "results.csv"), _rows(tmp_path / "none" / "results.csv")
    assert len(a) == len(b) == 2 and a == b  # losses, metrics, learning rates: to the last printed digit
    # one InfiniteDataLoader iterator for the whole run, yet one epoch line per epoch of the script
    lines = [ln for ln in none.stdout.splitlines() if ln.startswith("[amat] epoch")]
    assert [ln.split(":")[0] for ln in lines] == ["[amat] epoch 0", "[amat] epoch 1"]


@pytest.mark.slow
def test_amat_trains_offline_and_the_scripts_resume_continues_the_margins(checkout, data, tmp_path):
    guard = tmp_path / "net.txt"
    adv = ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2"]
    r = run(amat_cmd() + adv + ["--"] + train_args(data, tmp_path, "amat", 2, "--save-period", "1"), checkout, guard,
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not guard.exists(), guard.read_text()
    log = r.stdout
    assert log.count("[amat] adapter: classic YOLOv5") == 1
    assert [ln.split(":")[0] for ln in log.splitlines() if ln.startswith("[amat] epoch")] == \
        ["[amat] epoch 0", "[amat] epoch 1"]
    weights = tmp_path / "amat" / "weights"
    state = json.loads((weights / "amat_state.json").read_text())
    assert state["epochs"] == 2 and state["adapter"]["term_names"] == ["box", "obj", "cls"] and len(state["xi"]) == 3
    assert state["host_state"]["stats"]["rows_fed"] == 2 * 2 * 8  # 2 epochs x (8 clean + 8 noisy rows)
    margins = state["policy"]["margins"]
    assert len(margins["ids"]) == 8 and all(i.endswith(".png") for i in margins["ids"])
    assert any(abs(v - 0.5) > 1e-6 for v in margins["values"]), "margins never moved"
    first = json.loads((weights / "epoch0.pt.amat.json").read_text())
    assert first["epochs"] == 1 and first["checkpoint"].endswith("epoch0.pt")
    # the script's own --resume from epoch0.pt, with the margins saved next to it
    r = run(amat_cmd() + adv + ["--adv-resume", str(weights / "epoch0.pt.amat.json"), "--", "python", "train.py",
                                "--resume", str(weights / "epoch0.pt")], checkout, guard, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {weights / 'epoch0.pt.amat.json'}: epoch 1, 8 margins (digest {first['digest']})" in r.stdout
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("[amat] epoch")] == ["[amat] epoch 1"]
    after = json.loads((weights / "amat_state.json").read_text())
    assert after["epochs"] == 2 and [h["epoch"] for h in after["history"]] == [0, 1]
    assert after["policy"]["margins"]["updates"] == first["policy"]["margins"]["updates"] + 8


@pytest.mark.slow
def test_calibrate_and_eval_through_the_shared_task_commands(checkout, data, tmp_path):
    """``amat calibrate|eval yolov5``: xi per term (box/obj/cls) from the clean model's training
    images, then PGD / IFGSM / worst case with mAP50-95 and the paper's average IoU."""
    env = {"AMAT_YOLOV5_DIR": str(checkout)}
    r = run(amat_cmd() + ["run", "--adv", "none", "--"] + train_args(data, tmp_path, "std", 1), checkout, env=env,
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    weights = tmp_path / "std" / "weights" / "last.pt"
    xi_file = tmp_path / "xi.json"
    cal = run(amat_cmd() + ["calibrate", "yolov5", "--weights", str(weights), "--data", str(data), "--img", "64",
                            "--batch", "4", "-o", str(xi_file)], tmp_path, env=env, timeout=600)
    assert cal.returncode == 0, cal.stderr[-3000:]
    rec = json.loads(xi_file.read_text())
    assert rec["task"] == "yolov5" and rec["term_names"] == ["box", "obj", "cls"] and rec["rule"] == "mean+2std"
    assert rec["n_samples"] == 8 and rec["xi"]["mean"] == pytest.approx(rec["stats"]["mean"])
    assert all(s > 0 for s in rec["stats"]["mean"])
    assert "xi (mean+2std) over 8 training samples: box=" in cal.stdout
    ev = run(amat_cmd() + ["eval", "yolov5", "--models", f"STD={weights}", "--data", str(data), "--img", "64",
                           "--batch", "4", "--split", "val", "--levels", "0.5,1", "--pgd-steps", "2", "--ifgsm-steps",
                           "1", "--attacks", "pgd,ifgsm,worst", "--out", str(tmp_path / "ev"), "--no-progress"],
             tmp_path, env=env, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "robustness.json").read_text())["STD"]
    assert report["samples"] == 4 and report["levels"] == [0.5, 1.0] and "worst" in report["noisy"]
    assert set(report["clean"]) == {"mAP50-95", "mAP50", "IoU"}
    bad = run(amat_cmd() + ["eval", "yolov5", "--models", f"STD={weights}", "--data", str(data)], tmp_path,
              env={"AMAT_YOLOV5_DIR": str(tmp_path / "nowhere")})
    assert bad.returncode == 2 and "no classic YOLOv5 checkout" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_authors_protocol_two_runs_through_the_classic_script(checkout, data, tmp_path):
    """``--adv-protocol authors`` on the classic script: the authors' YOLO column (per-epoch
    updates, refine floored at Delta, their published box/obj/cls xi), recorded in the
    state; the script's --resume continues under the same protocol and is refused under the paper's."""
    adv = ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2", "--adv-protocol", "authors"]
    r = run(amat_cmd() + adv + ["--"] + train_args(data, tmp_path, "authors", 2, "--save-period", "1"), checkout,
            tmp_path / "net.txt", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "settings (authors protocol, yolov5 trainer)" in r.stdout
    weights = tmp_path / "authors" / "weights"
    state = json.loads((weights / "amat_state.json").read_text())
    cfg = state["config"]
    assert (cfg["protocol"], cfg["kind"], cfg["update"], cfg["refine"], cfg["clamp"]) == \
        ("authors", "yolov5", "epoch", "floor", "input")
    assert state["xi"] == pytest.approx([0.03965024, 0.060259447, 0.04034234])
    assert "preset authors:yolov5 (SarielMa/amat_conf@d0aa94e yolov5/train_AMAT.py:352-354" in cfg["xi_source"]
    m = state["policy"]["margins"]
    assert m["update"] == "epoch" and m["pending"] == [] and len(m["values"]) == 8
    assert min(m["values"]) >= 0.5 - 1e-9  # the authors' YOLO floor: E never below Delta
    assert m["updates"] == 2 * 8  # one visit per image per epoch, recorded
    # run 2: the script's --resume under the same protocol continues the margins
    side = weights / "epoch0.pt.amat.json"
    r = run(amat_cmd() + adv + ["--adv-resume", str(side), "--", "python", "train.py", "--resume",
                                str(weights / "epoch0.pt")], checkout, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("[amat] epoch")] == ["[amat] epoch 1"]
    # under the paper's protocol the same resume is refused in one line
    r = run(amat_cmd() + adv[:-2] + ["--adv-resume", str(side), "--", "python", "train.py", "--resume",
                                     str(weights / "epoch0.pt")], checkout, timeout=600)
    assert r.returncode == 2 and "other protocol settings" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
