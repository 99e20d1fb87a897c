"""Metrics on hand-made data, AUC_robust, batched evaluation, resume, report files."""
import csv
import json

import pytest
import torch
from torch import nn

from amat_hooks.evaluation import EvalResult, check_levels, robustness_eval
from amat_hooks.evaluation.segmentation import SegmentationEvalTask
from amat_hooks.evaluation.metrics import adi, auc_robust, dice_counts, dice_from_counts, tvdi
from amat_hooks.evaluation.report import write_report


def test_dice_adi_tvdi_on_hand_made_masks():
    # sample 0: pred 2 px, label 2 px, overlap 1 -> TP1 FP1 FN1 -> dice 0.5
    # sample 1: pred 8 px = label 8 px -> dice 1.0
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    lab = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 0, 0:2] = 1
    lab[0, 0, 1:3] = 1
    pred[1, 2:4, :] = 1
    lab[1, 2:4, :] = 1
    c = dice_counts(pred, lab, labels=[1])
    assert c.tolist() == [[1, 1, 1], [8, 0, 0]]
    assert adi(c) == pytest.approx(0.75)                   # mean(0.5, 1.0)
    assert tvdi(c) == pytest.approx(2 * 9 / (2 * 9 + 1 + 1))  # 0.9: TVDI > ADI, as the paper says


def test_no_foreground_anywhere_scores_one_not_nan():
    c = dice_counts(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long), labels=[1])
    assert dice_from_counts(c).tolist() == [1.0] and tvdi(c) == 1.0


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes differ"):
        dice_counts(torch.zeros(1, 3, 3), torch.zeros(1, 3, 4))


def test_auc_robust_known_numbers():
    assert auc_robust(0.81, [0.64, 0.16, 0.0]) == pytest.approx((0.81 * 0.8 / 3) ** 0.5)
    # the paper's own tables: normalised trapezoid AUC from 0 to the largest level
    assert auc_robust(0.9101, [0.8673, 0.8205, 0.7681], [5, 10, 15]) == pytest.approx(0.8755, abs=1e-4)  # Table 8
    assert auc_robust(0.7753, [0.7407, 0.6709, 0.5590], [2, 6, 10]) == pytest.approx(0.7260, abs=1e-4)  # Table 9
    assert auc_robust(0.8271, [0.7972, 0.7572, 0.6637], [10, 20, 40]) == pytest.approx(0.7890, abs=1e-4)  # Table 10
    # Table 11 (MRE, lower is better) is the same formula times a constant 0.2584
    for row, table in (([1.773, 1.892, 2.044, 2.426], 0.4947), ([1.637, 1.906, 2.247, 3.870], 0.5218)):
        assert auc_robust(row[0], row[1:], [0.5, 1, 2]) * 0.2584 == pytest.approx(table, abs=3e-4)
    with pytest.raises(ValueError):
        auc_robust(0.5, [])


def test_levels_checked_and_sorted(capsys):
    assert check_levels([6, 2, 10]) == [2.0, 6.0, 10.0]
    assert "sorted" in capsys.readouterr().err
    for bad in ([0.0, 1.0], [-1.0], []):
        with pytest.raises(ValueError):
            check_levels(bad)


def _task(n=6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(n, 1, 8, 8)
    y = (x[:, 0] > 0.3).long()
    loss = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none").flatten(1).mean(1)
    return SegmentationEvalTask(model, x, y, loss, batch_size=2)


def test_batched_levels_equal_separate_evaluations():
    task = _task()
    both = robustness_eval(task, [0.5, 2.0], attacks=("ifgsm",), progress=False)
    for lv in (0.5, 2.0):
        one = robustness_eval(task, [lv], attacks=("ifgsm",), progress=False)
        assert one.noisy["ifgsm"][lv] == pytest.approx(both.noisy["ifgsm"][lv])
    assert both.clean == pytest.approx(one.clean)
    # a stronger attack lowers the score
    assert both.noisy["ifgsm"][2.0]["ADI"] <= both.noisy["ifgsm"][0.5]["ADI"] <= both.clean["ADI"] + 1e-9


def test_interrupted_evaluation_resumes_to_the_same_report(tmp_path):
    state = tmp_path / "eval.jsonl"
    full = robustness_eval(_task(), [1.0, 3.0], pgd_steps=5, progress=False)

    class Interrupt(_task().__class__):
        calls = 0

        def measure(self, x, target):
            Interrupt.calls += 1
            if Interrupt.calls > 7:  # 5 measures per batch (clean + 2 levels x 2 attacks): dies in batch 2
                raise KeyboardInterrupt
            return super().measure(x, target)

    t = _task()
    t.__class__ = Interrupt
    with pytest.raises(KeyboardInterrupt):
        robustness_eval(t, [1.0, 3.0], pgd_steps=5, state_path=state, progress=False)
    assert [json.loads(l)["key"] for l in state.read_text().splitlines()] == ["0"]
    with open(state, "a") as f:  # a record cut by the interruption
        f.write('{"key": "2", "clean": [[1, 2')
    resumed = robustness_eval(_task(), [1.0, 3.0], pgd_steps=5, state_path=state, resume=True, progress=False)
    assert resumed.clean == pytest.approx(full.clean)
    assert resumed.noisy == full.noisy
    assert [json.loads(l)["key"] for l in state.read_text().splitlines()] == ["0", "2", "4"]
    with pytest.raises(ValueError, match="different evaluation"):
        robustness_eval(_task(), [1.0, 4.0], pgd_steps=5, state_path=state, resume=True, progress=False)


def test_report_files_parse_and_png_is_valid(tmp_path):
    res = robustness_eval(_task(), [1.0, 2.0], pgd_steps=3, progress=False)
    weaker = EvalResult.from_dict(json.loads(json.dumps(res.to_dict())))
    weaker.clean = {k: v / 2 for k, v in weaker.clean.items()}
    results = {"STD": weaker, "AMAT": res}
    paths = write_report(results, tmp_path, margins=[0.1, 0.5, 0.7])
    md = paths["md"].read_text()
    assert "| Method | ADI | P.1 | P.2 | Avg. | IF.1 | IF.2 | Avg. | AUC_robust |" in md
    assert f"**{res.clean['ADI']:.4f}**" in md  # best clean is AMAT's
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][0] == "Method" and rows[2][0] == "AMAT" and len(rows) == 3
    assert float(rows[2][1]) == pytest.approx(res.clean["ADI"], abs=1e-6)
    data = json.loads(paths["json"].read_text())
    assert EvalResult.from_dict(data["AMAT"]).noisy == res.noisy
    for key in ("png", "margins_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 2000


def test_grid_trains_each_delta_once_and_picks_the_best_auc(tmp_path):
    import argparse

    from amat_hooks.cli.grid import run_grid
    from amat_hooks.config import AdvConfig
    from amat_hooks.demo.loop import train_one
    from amat_hooks.zoo.segnets import TinySegNet, seg_loss_terms
    from amat_hooks.zoo.shapes import shapes_segmentation

    xtr, ytr = shapes_segmentation(16, 16, seed=0)
    xva, yva = shapes_segmentation(8, 16, seed=5)
    trained = []

    def train(delta, folder):
        trained.append(delta)
        model, _, _ = train_one(AdvConfig(mode="amat", delta=delta, pgd_steps=2), xtr, ytr, 1, 8, 0, lambda s: None)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / "model.pt")
        return folder / "model.pt"

    def task_for(path):
        m = TinySegNet()
        m.load_state_dict(torch.load(path))
        return SegmentationEvalTask(m, xva, yva, seg_loss_terms, batch_size=8)

    args = argparse.Namespace(out=str(tmp_path), levels=[0.5, 1.0], pgd_steps=3, no_progress=True, seed=0)
    res = run_grid([0.5, 0.1], train, task_for, args)
    assert trained == [0.1, 0.5] and sorted(res) == [0.1, 0.5]
    table = (tmp_path / "grid.md").read_text()
    best = max(res, key=lambda d: res[d].auc_robust("pgd"))
    assert f"best Delta = {best:g}" in table and f"**{res[best].auc_robust('pgd'):.4f}**" in table
    run_grid([0.5, 0.1], train, task_for, args)  # resumed: nothing retrained
    assert trained == [0.1, 0.5]


def test_demo_verdict_calls_small_differences_noise():
    from amat_hooks.evaluation import warn_if_weak

    def res(clean, noisy):
        return EvalResult(task="t", metric="ADI", higher_is_better=True, levels=[1.0, 2.0],
                          clean={"ADI": clean}, noisy={"pgd": {1.0: {"ADI": noisy[0]}, 2.0: {"ADI": noisy[1]}}},
                          batches=1, seconds=0.0)

    notes = warn_if_weak({"STD": res(0.9, [0.50, 0.30]), "SAT4": res(0.8, [0.60, 0.50]),
                          "AMAT": res(0.9, [0.70, 0.50])})
    assert "difference +0.2000" in notes[0] and "as the paper claims" in notes[0]
    assert notes[1] == "AMAT vs best SAT (SAT4) robust average under PGD: 0.6000 vs 0.5500"
    small = warn_if_weak({"STD": res(0.9, [0.50, 0.30]), "AMAT": res(0.9, [0.505, 0.30])})
    assert "too small" in small[0] and len(small) == 1
    behind = warn_if_weak({"STD": res(0.9, [0.50, 0.30]), "SAT1": res(0.9, [0.9, 0.9]),
                           "AMAT": res(0.9, [0.40, 0.30])})
    assert "NOT more robust" in behind[0] and behind[1].endswith("SAT ahead at this budget")
