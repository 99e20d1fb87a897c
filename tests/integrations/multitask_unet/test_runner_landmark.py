"""The unmodified Multi-Task U-Net example script (examples/landmark/train.py) run directly
and through `amat run`, in subprocesses, on generated landmarks (tiny 64x48 images) and,
where present, on the real ISBI 2015 data."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from amat_hooks.zoo.isbi_writers import write_generated_isbi

from support import amat_cmd, run

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "landmark" / "train.py"
ISBI = REPO.parent / "shared" / "data" / "isbi2015_ceph"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_generated_isbi(tmp_path_factory.mktemp("lm") / "ceph", n=6, height=96, width=72,
                                num_landmarks=3, seed=0)


def script_args(data: Path, out: Path | str, *extra: str) -> list[str]:
    return ["python", str(SCRIPT), "--data", str(data), "--train-ids", "1-4", "--val-ids", "5",
            "--size", "64", "48", "--num-landmarks", "3", "--batch-size", "2", "--epochs", "1",
            "--save-every", "1", "--out", str(out), *extra]


def test_example_direct_none_and_amat(data, tmp_path):
    out = {k: tmp_path / k for k in ("direct", "none", "amat")}
    # 1. the script on its own: an ordinary clean run (it does not import amat_hooks)
    shipped = REPO / "amat_hooks" / "examples"  # the script and its loader, in the package; the network
    for f in ("landmark_train.py", "landmark_data.py"):  # module imports the network definition, nothing else
        assert not re.search(r"^\s*(import|from)\s+amat_hooks(?!\.examples\.landmark_)", (shipped / f).read_text(), re.M)
    r = run([sys.executable] + script_args(data, out["direct"], "--heatmap-loss", "dice")[1:], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Epoch 0 train rows 4 " in r.stdout and "[amat]" not in r.stdout
    assert "mean of points.csv and senior_csv for 4/4 images" in r.stdout
    # 2. --adv none through the runner: the very same training
    r = run(amat_cmd() + ["run", "--adv", "none", "--"] + script_args(data, out["none"], "--heatmap-loss", "dice"),
            tmp_path)
    assert r.returncode == 0, r.stderr
    direct = torch.load(out["direct"] / "model_epoch_0.pth")
    none = torch.load(out["none"] / "model_epoch_0.pth")
    assert all(torch.equal(direct[k], none[k]) for k in direct)
    # 3. AMAT: noisy rows reach the script's loss, margins move, state next to the checkpoint
    guard = tmp_path / "network_attempts.txt"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "1", "--adv-xi-rule", "mean+2std",
                          "--adv-steps", "2", "--adv-refine-steps", "2", "--heatmap-loss", "dice", "--"]
            + script_args(data, out["amat"], "--heatmap-loss", "dice"), tmp_path, guard)
    assert r.returncode == 0, r.stderr
    assert not guard.exists()
    assert "Epoch 0 train rows 8 " in r.stdout  # 4 clean + 4 noisy rows through the script's loop
    assert "adapter: Multi-Task U-Net (heatmap term: dice; --heatmap-loss" in r.stdout
    assert "forward: clean and noisy rows as two forward passes" in r.stdout
    amat = torch.load(out["amat"] / "model_epoch_0.pth")
    assert not all(torch.allclose(direct[k], amat[k]) for k in direct)  # trained on noisy rows too
    side = json.loads((out["amat"] / "model_epoch_0.pth.amat.json").read_text())
    assert side["adapter"]["term_names"] == ["heatmap", "offset_x", "offset_y"] and len(side["xi"]) == 3
    margins = side["policy"]["margins"]
    assert sorted(margins["ids"]) == [0, 1, 2, 3]
    assert margins["updates"] == 4 and any(abs(v - 1.0) > 1e-9 for v in margins["values"])
    assert side["config"]["xi_rule"] == "mean+2std"
    assert re.search(r"\[amat\] epoch 0: AMAT, batches 2, rows fed 8, .*margins n=4", r.stdout)


def test_example_sat_with_bce_and_the_heatmap_loss_check(data, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "1", "--adv-steps", "2", "--heatmap-loss", "bce",
                          "--"] + script_args(data, tmp_path / "sat", "--heatmap-loss", "bce", "--num-workers", "2"),
            tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Epoch 0 train rows 8 " in r.stdout
    st = json.loads((tmp_path / "sat" / "amat_state.json").read_text())
    assert st["label"] == "SAT1" and st["adapter"]["heatmap_loss"] == "bce" and st["host_state"]["input_shape"] == [3, 64, 48]
    # the script trains with BCE but the runner was told dice: refused before the first optimizer
    # step; nothing trained, nothing written (no checkpoint, no state)
    bad = tmp_path / "bad"
    bad.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "1", "--adv-steps", "1", "--heatmap-loss", "dice", "--"]
            + script_args(data, bad, "--heatmap-loss", "bce"), bad)
    assert r.returncode == 3 and "pass --heatmap-loss bce" in r.stderr, r.stderr
    assert "Epoch 0 train rows" not in r.stdout and list(bad.iterdir()) == []
    # no flag: inferred. The example creates its nn.BCELoss always, so bce is the first guess;
    # with its --heatmap-loss dice it never calls it in training: corrected before the first step
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "1", "--adv-steps", "1", "--"]
            + script_args(data, tmp_path / "auto", "--heatmap-loss", "dice"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "heatmap term: bce; inferred: the script created an nn.BCELoss" in r.stdout
    assert "heatmap term: dice, not bce" in r.stdout
    side = json.loads((tmp_path / "auto" / "model_epoch_0.pth.amat.json").read_text())
    assert side["adapter"]["heatmap_loss"] == "dice" and side["policy"]["margins"]["updates"] == 4


@pytest.mark.realdata
def test_real_isbi_smoke_through_amat_run(tmp_path):
    if not (ISBI / "dataset" / "benchmark" / "points.csv").is_file():
        pytest.skip(f"ISBI 2015 data not found at {ISBI} (opt-in real-data test)")
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "1", "--adv-xi-rule", "mean+2std", "--adv-steps", "2",
                          "--adv-refine-steps", "2", "--", "python", str(SCRIPT), "--data", str(ISBI),
                          "--train-ids", "1-2", "--val-ids", "151", "--size", "64", "48", "--batch-size", "2",
                          "--epochs", "1", "--heatmap-loss", "dice", "--out", str(tmp_path / "isbi")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "train set: 2 images (mean of points.csv and senior_csv for 2/2 images)" in r.stdout
    assert "Epoch 0 train rows 4 " in r.stdout
    st = json.loads((tmp_path / "isbi" / "amat_state.json").read_text())
    assert sorted(st["policy"]["margins"]["ids"]) == [0, 1]


def test_calibrate_and_eval_landmark_commands(data, tmp_path):
    """xi = mean + 2 std of the per-sample terms of a clean model; eval's clean MRE equals
    voting + radial error computed here."""
    from amat_hooks.zoo.isbi_dataset import LandmarkDataset
    from amat_hooks.integrations.multitask_unet.adapter import landmark_terms
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet
    from amat_hooks.zoo.landmark_maps import voting

    torch.manual_seed(0)
    model = MultiTaskUNet(num_landmarks=3).eval()
    ckpt = tmp_path / "std.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)  # DataParallel-style keys
    r = run(amat_cmd() + ["calibrate", "landmark", "--checkpoint", str(ckpt), "--data", str(data),
                          "--size", "64", "48", "--out", str(tmp_path / "xi.json")], tmp_path)
    assert r.returncode == 0, r.stderr
    xi = json.loads((tmp_path / "xi.json").read_text())["xi"]["mean+2std"]  # the paper's rule for landmarks
    ds = LandmarkDataset(data, "train", size=(64, 48), num_landmarks=3)
    items = [ds[i] for i in range(len(ds))]
    cols = [torch.stack([it[k] for it in items]) for k in range(6)]
    with torch.no_grad():
        out = model(cols[0])
        t = landmark_terms(out, cols[1], cols[2], cols[3], cols[4], "dice").double()
    expect = t.mean(0) + 2 * t.std(0, unbiased=False)
    assert xi == pytest.approx(expect.tolist(), rel=1e-4)
    assert f"--adv-xi {','.join(f'{v:.6g}' for v in xi)}" in r.stdout

    r = run(amat_cmd() + ["eval", "landmark", "--models", f"STD={ckpt}", "--data", str(data), "--split", "train",
                          "--size", "64", "48", "--levels", "1", "--pgd-steps", "2", "--ifgsm-steps", "2",
                          "--no-progress", "--out", str(tmp_path / "rep")], tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "rep" / "robustness.json").read_text())["STD"]
    pred = voting(out[0], out[1], out[2], ds.radius)
    err = ((pred - cols[5]) * torch.tensor([72 / 48, 96 / 64])).norm(dim=2) * 0.1
    assert res["clean"]["MRE"] == pytest.approx(float(err.mean()), rel=1e-4)
    assert set(res["noisy"]) == {"pgd", "ifgsm"} and "SDR2mm" in res["clean"]
    assert (tmp_path / "rep" / "robustness.md").is_file()
    r = run(amat_cmd() + ["eval", "landmark", "--models", str(tmp_path / "none.pth"), "--data", str(data)], tmp_path)
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_grid_landmark_trains_through_amat_run_per_delta(data, tmp_path):
    args = ["grid", "landmark", "--deltas", "1", "--data", str(data), "--size", "64", "48", "--adv-steps", "1",
            "--levels", "0.5", "--pgd-steps", "1", "--no-progress", "--out", str(tmp_path / "grid"), "--"]
    script = script_args(data, "{out}", "--heatmap-loss", "dice")
    r = run(amat_cmd() + args + script, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    ckpt = Path(grid["1"]["artefact"])
    assert ckpt.name == "model_epoch_0.pth" and Path(str(ckpt) + ".amat.json").is_file()
    assert "best Delta = 1" in r.stdout and (tmp_path / "grid" / "grid.md").is_file()
    r = run(amat_cmd() + args + script, tmp_path)  # finished grid points are not retrained
    assert r.returncode == 0 and "Delta=1: done earlier" in r.stdout
    r = run(amat_cmd() + args + [w for w in script if w != "{out}"], tmp_path)
    assert r.returncode == 2 and "{out}" in r.stderr
