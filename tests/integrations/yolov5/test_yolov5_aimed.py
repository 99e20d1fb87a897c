"""Issue 32 for the classic YOLOv5 task: the attacks aimed at mAP (suppress, displace) read the
Detect head's own boxes and objectness x class confidences (checked against val.py's NMS on the
same forward) and join `worst` in `amat eval yolov5`; issue 28: the masking check's floor is no
detection. Needs a checkout (AMAT_YOLOV5_DIR), like test_yolov5.py."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from support import amat_cmd, run

CHECKOUT = os.environ.get("AMAT_YOLOV5_DIR")
HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not CHECKOUT or not (Path(CHECKOUT) / "train.py").is_file():
        pytest.skip("classic YOLOv5 checkout not found: set AMAT_YOLOV5_DIR to a clone of ultralytics/yolov5")
    from amat_hooks.zoo.detection_data import make_dataset

    root = tmp_path_factory.mktemp("y5aimed")
    checkout = root / "yolov5"
    shutil.copytree(CHECKOUT, checkout, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__"))
    data = make_dataset(root / "data", n_train=8, n_val=4, size=64, seed=0)
    r = run(amat_cmd() + ["run", "--adv", "none", "--", "python", "train.py", "--data", str(data), "--cfg",
                          "yolov5n.yaml", "--weights", "", "--img", "64", "--batch", "4", "--epochs", "2", "--workers",
                          "0", "--device", "cpu", "--project", str(root), "--name", "std", "--noplots", "--exist-ok"],
            checkout, env={"AMAT_YOLOV5_DIR": str(checkout)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return checkout, root / "std" / "weights" / "last.pt", data


def test_predictions_are_the_detect_heads_own(trained):
    checkout, weights, data = trained
    p = run([sys.executable, str(HERE / "y5_aimed_checks.py"), str(checkout), str(weights), str(data)], checkout,
            timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["rows"] == 2 * r["images"] and r["checked"] > 0
    assert r["box_err"] < 1e-3 and r["conf_err"] < 1e-5 and r["truth_err"] < 1e-4, r


def test_eval_yolov5_worst_runs_the_aimed_attacks(trained, tmp_path):
    checkout, weights, data = trained
    ev = run(amat_cmd() + ["eval", "yolov5", "--models", f"STD={weights}", "--data", str(data), "--img", "64",
                           "--batch", "4", "--split", "val", "--levels", "0.5,2", "--pgd-steps", "2", "--ifgsm-steps",
                           "1", "--attacks", "pgd,ifgsm,worst", "--out", str(tmp_path / "ev"), "--no-progress"],
             tmp_path, env={"AMAT_YOLOV5_DIR": str(checkout)}, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads((tmp_path / "ev" / "robustness.json").read_text())["STD"]
    assert res["worst_of"] == ["pgd", "ifgsm", "suppress", "displace"]
    assert res["floor"] == 0.0 and res["floor_from"] == "no detection"
    assert len(res["per_sample"]["worst_from"]["2"]) == 4
    md = (tmp_path / "ev" / "robustness.md").read_text()
    assert "**SUP: 2-step PGD aimed at the metric (suppress)" in md and "| Method | W.0.5 from | W.2 from |" in md


def test_eval_yolov5_runs_an_aimed_attack_listed_by_name(trained, tmp_path):
    """`--attacks suppress` (no `worst`) is accepted on the command line and scored on its own."""
    checkout, weights, data = trained
    ev = run(amat_cmd() + ["eval", "yolov5", "--models", f"STD={weights}", "--data", str(data), "--img", "64",
                           "--batch", "4", "--split", "val", "--levels", "2", "--pgd-steps", "2",
                           "--attacks", "suppress", "--out", str(tmp_path / "ev"), "--no-progress"],
             tmp_path, env={"AMAT_YOLOV5_DIR": str(checkout)}, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads((tmp_path / "ev" / "robustness.json").read_text())["STD"]
    assert list(res["noisy"]) == ["suppress"]
    at2 = {float(k): v for k, v in res["noisy"]["suppress"].items()}[2.0]
    assert at2["mAP50-95"] <= res["clean"]["mAP50-95"] + 1e-9
