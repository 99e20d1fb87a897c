"""Issue 29, item 1, through the real commands: `amat calibrate landmark --margins-out` writes
each training image's radius keyed as `amat run` keys its margins, and the unmodified landmark
example started with `--adv-margin-init` grows each margin from there (hand-computed); a
resume keeps the trained margins; a file of other ids is refused at the first batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amat_hooks.zoo.isbi_writers import write_generated_isbi
from amat_hooks.zoo.multitask_unet import MultiTaskUNet

from support import amat_cmd, run

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "landmark" / "train.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 6 images: the generated split is train 1-3, val 4
    return write_generated_isbi(tmp_path_factory.mktemp("lm") / "ceph", n=6, height=96, width=72,
                                num_landmarks=3, seed=0)


def script_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["python", str(SCRIPT), "--data", str(data), "--train-ids", "1-3", "--val-ids", "4",
            "--size", "64", "48", "--num-landmarks", "3", "--batch-size", "2", "--epochs", str(epochs),
            "--save-every", "1", "--heatmap-loss", "dice", "--out", str(out)]


def test_calibrated_radii_start_the_margins_of_a_real_run(data, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "std.pth"
    torch.save(MultiTaskUNet(num_landmarks=3).state_dict(), ckpt)
    init = tmp_path / "margins.json"
    r = run(amat_cmd() + ["calibrate", "landmark", "--checkpoint", str(ckpt), "--data", str(data), "--size", "64",
                          "48", "--out", str(tmp_path / "xi.json"), "--margins-out", str(init), "--margin-steps", "8",
                          "--margin-max", "6", "--no-progress"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initial margins of 3 training samples" in r.stdout and "--adv-margin-init" in r.stdout
    rec = json.loads(init.read_text())
    xi = json.loads((tmp_path / "xi.json").read_text())
    assert rec["ids"] == [0, 1, 2] and rec["max_radius"] == 6.0 and rec["steps"] == 8
    assert rec["xi"] == xi["xi"][xi["rule"]] and rec["rule"] == "mean+2std"  # the landmark task's paper rule
    assert all(r_ is None or 0 <= r_ <= 6 for r_ in rec["radii"]) and rec["seconds"] > 0
    start = [6.0 if r_ is None else r_ for r_ in rec["radii"]]

    # one epoch, every noisy term under xi: each margin = max(radius, Delta) + Delta (Algorithm 1, line 10)
    out = tmp_path / "amat"
    adv = ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2", "--adv-xi", "1e6,1e6,1e6",
           "--adv-margin-init", str(init), "--"]
    r = run(amat_cmd() + adv + script_args(data, out, 1), tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initial margins from" in r.stdout + r.stderr
    state = json.loads((out / "amat_state.json").read_text())
    m = state["policy"]["margins"]
    got = dict(zip(m["ids"], m["values"]))
    assert got == pytest.approx({i: max(s, 0.5) + 0.5 for i, s in enumerate(start)})
    assert m["initial"]["digest"] == rec["digest"] and state["config"]["margin_init"] == str(init)

    # a resume keeps the trained margins (not the file's), with the same file; without it: refused
    side = out / "model_epoch_0.pth.amat.json"
    again = tmp_path / "again"
    r = run(amat_cmd() + adv[:-1] + ["--adv-resume", str(side), "--adv-out", str(again), "--"]
            + script_args(data, again, 0), tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((again / "amat_state.json").read_text())["policy"]["margins"]["values"] == m["values"]
    no_init = [a for a in adv if a not in ("--adv-margin-init", str(init))]
    r = run(amat_cmd() + no_init[:-1] + ["--adv-resume", str(side), "--"] + script_args(data, tmp_path / "x", 1),
            tmp_path, timeout=600)
    assert r.returncode == 2 and "initial margins" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr

    # a file keyed by other ids (an nnU-Net file): refused at the first batch, in one line
    other = json.loads(init.read_text())
    other["ids"] = [["case_1", 0], ["case_1", 1], ["case_1", 2]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    bad = adv[:-2] + [str(tmp_path / "other.json"), "--"]
    r = run(amat_cmd() + bad + script_args(data, tmp_path / "bad", 1), tmp_path, timeout=600)
    assert r.returncode != 0 and "has no initial margin" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
