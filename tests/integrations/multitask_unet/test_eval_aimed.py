"""Issue 32 end to end: `amat eval landmark --attacks pgd,ifgsm,worst` on a Multi-Task U-Net the
test trains (the example script through `amat run --adv none`) runs the attacks aimed at the
voted location (heatmap, vote) inside `worst`, and the report names where each sample's worst
value came from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from amat_hooks.zoo.isbi_writers import write_generated_isbi

from support import amat_cmd, run

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "landmark" / "train.py"

pytestmark = pytest.mark.slow


def test_eval_landmark_worst_includes_the_aimed_attacks_and_names_its_source(tmp_path):
    data = write_generated_isbi(tmp_path / "ceph", n=6, height=96, width=72, num_landmarks=3, seed=0)
    train = tmp_path / "std"
    r = run(amat_cmd() + ["run", "--adv", "none", "--heatmap-loss", "dice", "--", "python", str(SCRIPT),
                          "--data", str(data), "--train-ids", "1-4", "--val-ids", "5", "--size", "64", "48",
                          "--num-landmarks", "3", "--batch-size", "2", "--epochs", "2", "--save-every", "2",
                          "--heatmap-loss", "dice", "--out", str(train)], tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = train / "model_epoch_1.pth"
    rep = tmp_path / "rep"
    r = run(amat_cmd() + ["eval", "landmark", "--models", f"STD={ckpt}", "--data", str(data), "--split", "all",
                          "--levels", "1,4", "--attacks", "pgd,ifgsm,worst", "--pgd-steps", "3", "--ifgsm-steps", "2",
                          "--no-progress", "--out", str(rep)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "input 64x48" in r.stderr  # the size the sidecar of `amat run` recorded
    assert "note: worst also runs the attacks aimed at this task's MRE: heatmap, vote" in r.stderr
    res = json.loads((rep / "robustness.json").read_text())["STD"]
    assert res["worst_of"] == ["pgd", "ifgsm", "heatmap", "vote"]
    assert set(res["noisy"]) == {"pgd", "ifgsm", "heatmap", "vote", "worst"}
    assert res["steps"] == {"pgd": 3, "ifgsm": 2, "heatmap": 3, "vote": 3}
    scores = res["per_sample"]["scores"]
    for lv in ("1", "4"):
        src = res["per_sample"]["worst_from"][lv]
        assert len(src) == 6 and set(src) <= set(res["worst_of"])  # the 6 images of --split all
        for i, w in enumerate(scores["worst"][lv]):  # MRE: the worst is the largest, and it is the named one's
            assert w == max(scores[a][lv][i] for a in res["worst_of"]) == scores[src[i]][lv][i]
    md = (rep / "robustness.md").read_text()
    assert "**HM: 3-step PGD aimed at the metric (heatmap): heatmap logits pushed down inside" in md
    assert "**VOTE: 3-step PGD aimed at the metric (vote)" in md
    assert "worst case per sample over pgd, ifgsm, heatmap, vote" in md
    lines = md.splitlines()
    row = lines[lines.index("| Method | W.1 from | W.4 from |") + 2]
    for cell in row.split("|")[2:4]:
        assert sum(int(part.split()[1]) for part in cell.split(",")) == 6, row  # every image named once
    assert any(line.startswith("- STD: worst case at level 4 from: ") for line in lines)
