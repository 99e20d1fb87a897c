"""Issue 27 through the real command: the unmodified landmark example under ``amat run
--adv-protocol authors``. Two short runs with hand-computed margins (the authors' landmark
trainer updates once per epoch, never refines, caps at 10 Delta), and a resume under the
paper's protocol refused before the script starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from amat_hooks.zoo.isbi_writers import write_generated_isbi

from support import amat_cmd, run

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "landmark" / "train.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_generated_isbi(tmp_path_factory.mktemp("lm") / "ceph", n=6, height=96, width=72,
                                num_landmarks=3, seed=0)


def script_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["python", str(SCRIPT), "--data", str(data), "--train-ids", "1-4", "--val-ids", "5",
            "--size", "64", "48", "--num-landmarks", "3", "--batch-size", "2", "--epochs", str(epochs),
            "--save-every", "1", "--heatmap-loss", "dice", "--out", str(out)]


def amat_run(data, out, xi, epochs=2, *extra):
    adv = ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-protocol", "authors", "--adv-steps", "2",
           "--adv-xi", xi, *extra, "--"]
    return run(amat_cmd() + adv + script_args(data, out, epochs), out.parent, out.parent / "net.txt", timeout=600)


def test_two_authors_runs_follow_the_authors_landmark_rules_and_a_paper_resume_is_refused(data, tmp_path):
    # run 1: every noisy term passes -> +Delta once per epoch: 0.5 + 2 x 0.5 = 1.5 after 2 epochs
    r = amat_run(data, tmp_path / "pass", "1e6,1e6,1e6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "net.txt").exists()
    assert "settings (authors protocol, landmark trainer)" in r.stdout
    state = json.loads((tmp_path / "pass" / "amat_state.json").read_text())
    cfg = state["config"]
    assert cfg["protocol"] == "authors" and cfg["kind"] == "landmark"
    assert (cfg["update"], cfg["refine"], cfg["accept_iterates"], cfg["start"], cfg["attack_bn"], cfg["terms"],
            cfg["clamp"], cfg["pgd_steps"]) == ("epoch", "none", "all", "sphere", "train", "authors", "input", 2)
    assert cfg["max_margin"] == pytest.approx(10 * 0.5)  # the authors' cap: 10 Delta
    m = state["policy"]["margins"]
    assert m["update"] == "epoch" and sorted(m["ids"]) == [0, 1, 2, 3]
    assert m["values"] == pytest.approx([1.5] * 4)
    # run 2: nothing passes -> no refine under the authors' landmark rule: every margin stays Delta
    r = amat_run(data, tmp_path / "fail", "1e-12,1e-12,1e-12")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "fail" / "amat_state.json").read_text())["policy"]["margins"]
    assert m["values"] == pytest.approx([0.5] * 4)
    # a resume of run 1 under the paper's protocol: refused in one line before the script starts
    side = tmp_path / "pass" / "model_epoch_0.pth.amat.json"
    out = tmp_path / "paper"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2", "--adv-xi", "1e6,1e6,1e6",
                          "--adv-resume", str(side), "--"] + script_args(data, out, 2), tmp_path, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any("other protocol settings" in ln and "--adv-protocol" in ln for ln in lines), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "Epoch 0" not in r.stdout and not out.exists()


def test_calibrate_authors_is_huber_plus_3_scales_in_train_mode_batch_1(data, tmp_path):
    """Row 10: the authors' landmark xi, recomputed here with statsmodels' Huber (their call):
    each training image alone through the model in train mode, their 0.5 x Dice-vs-mask term."""
    sm = pytest.importorskip("statsmodels.robust.scale")
    import numpy as np
    import torch

    from amat_hooks.integrations.multitask_unet.adapter import landmark_terms
    from amat_hooks.zoo.isbi_dataset import LandmarkDataset
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    torch.manual_seed(0)
    model = MultiTaskUNet(num_landmarks=3)
    ckpt = tmp_path / "std.pth"
    torch.save(model.state_dict(), ckpt)
    xi_file = tmp_path / "xi.json"
    r = run(amat_cmd() + ["calibrate", "landmark", "--checkpoint", str(ckpt), "--data", str(data), "--size", "64",
                          "48", "--protocol", "authors", "--out", str(xi_file)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(xi_file.read_text())
    assert rec["rule"] == "huber+3" and rec["source"]["protocol"] == "authors"
    assert rec["identity"]["heatmap_loss"] == "authors (0.5 Dice vs mask)"
    ds = LandmarkDataset(data, "train", size=(64, 48), num_landmarks=3)
    rows = []
    model.train()
    with torch.no_grad():
        for i in range(len(ds)):
            it = [t.unsqueeze(0) for t in ds[i][:5]]
            rows.append(landmark_terms(model(it[0]), it[1], it[1], it[3], it[4], "dice", smooth=0.0,
                                       weight=0.5)[0].double())
    t = torch.stack(rows).numpy()
    expect = []
    for k in range(3):
        loc, scale = sm.Huber(c=1.5, tol=1e-8, maxiter=30)(np.asarray(t[:, k]))
        expect.append(float(loc) + 3 * float(scale))
    assert rec["xi"]["huber+3"] == pytest.approx(expect, rel=1e-4)
    # the file is for the authors' term: a paper-protocol run (the script's own heatmap term) refuses it
    out = tmp_path / "paper"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "1", "--adv-xi-file",
                          str(xi_file), "--"] + script_args(data, out, 1), tmp_path, timeout=600)
    assert r.returncode in (2, 3) and "heatmap_loss" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "1", "--adv-protocol", "authors",
                          "--adv-xi-file", str(xi_file), "--"] + script_args(data, tmp_path / "authors", 1), tmp_path,
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
