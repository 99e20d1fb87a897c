"""Issue 32: attacks aimed at the metric (landmarks: ``heatmap``, ``vote``; detection:
``suppress``, ``displace``) through the one ``pgd``, inside ``worst``; against models whose answer
is known by hand (a heatmap peak that moves linearly with the input, a detector whose confidence
or box moves linearly with it). Issue 28: the masking check's floor is the trivial prediction,
and a floor not reached by an attack that beats noise is a note about the levels."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from torch import nn

from amat_hooks.evaluation import EvalBatch, EvalResult, EvalTask, RadiusSpec, check_attacks, fingerprint, masking_check
from amat_hooks.evaluation.objectives import DetectionObjectives, box_iou_pairs, displace_terms, suppress_terms
from amat_hooks.evaluation.report import to_markdown, write_report
from amat_hooks.evaluation.run import robustness_eval
from amat_hooks.evaluation.segmentation import SegmentationEvalTask
from amat_hooks.integrations.multitask_unet.task import LandmarkEvalTask
from amat_hooks.zoo.landmark_maps import landmark_targets

H, W, R = 8, 64, 2.0   # a strip of an image; disk radius 2 px (voting takes the top int(pi R^2) = 12 pixels)
CY = 4.0               # the landmark's row


# -- a heatmap model whose peak moves linearly with the input ----------------------------------------
class MovingPeak(nn.Module):
    """Landmark 0's heatmap peaks at column ``c = c0 + gain * <x, u>`` (row CY), a cone in the
    logits; its offsets point exactly at the peak, so voting decodes (c, CY). No L2 noise of
    norm eps can move the peak by more than ``gain * eps`` (||u|| = 1)."""

    def __init__(self, u: torch.Tensor, c0: float, gain: float):
        super().__init__()
        self.register_buffer("u", u / u.norm())
        self.c0, self.gain = c0, gain

    def forward(self, x):
        c = self.c0 + self.gain * (x.flatten(1) * self.u.flatten()).sum(1)         # [B]
        xs = torch.arange(W, dtype=x.dtype).view(1, 1, 1, W)
        ys = torch.arange(H, dtype=x.dtype).view(1, 1, H, 1)
        cc = c.view(-1, 1, 1, 1)
        d = ((xs - cc) ** 2 + (ys - CY) ** 2 + 1.0).sqrt()
        heat = torch.sigmoid(4.0 - d / 2)
        ox = ((cc - xs) / R).expand_as(heat)
        oy = ((CY - ys) / R).expand_as(heat).clone()
        return heat, oy, ox


class StripData:
    """What LandmarkEvalTask reads from a LandmarkDataset: one landmark at column ``truth[i]``."""

    radius = R

    def __init__(self, truth):
        self.truth = list(truth)
        self.names = [f"im{i}" for i in range(len(self.truth))]

    def __len__(self):
        return len(self.truth)

    def __getitem__(self, i):
        lm = torch.tensor([[self.truth[i], CY]])
        mask, heat, oy, ox = landmark_targets(lm, H, W, R)
        return torch.zeros(1, H, W), mask, heat, oy, ox, lm

    def to_original_mm(self):
        return {"scale_x": 1.0, "scale_y": 1.0, "pixel_mm": 1.0}  # errors in pixels


def _peak_task(truth=(6.0,), c0=8.0, gain=4.0, batch=4):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, H, W, generator=g) + 0.5  # every entry of eps * u stays inside [-1, 1] below eps 8
    return LandmarkEvalTask(MovingPeak(u, c0, gain), StripData(truth), batch_size=batch, heatmap_loss="dice")


@pytest.mark.parametrize("objective", ["heatmap", "vote"])
def test_aimed_landmark_attack_reaches_the_analytic_displacement(objective):
    """The peak moves by at most gain * eps under L2 noise of norm eps; the aimed attack reaches
    it: error = (c0 - truth) + gain * eps, the move to 3 % (what is left of the random start's
    direction after 100 steps of 2.5 eps / steps: ~1.5 % here)."""
    task = _peak_task()
    levels = [0.5, 1.0, 2.0, 4.0]
    r = robustness_eval(task, levels, attacks=(objective,), pgd_steps=100, progress=False)
    assert r.clean["MRE"] == pytest.approx(2.0, abs=1e-4)
    for lv in levels:
        moved = (r.noisy[objective][lv]["MRE"] - 2.0) / (4.0 * lv)  # share of the largest possible move
        assert 0.97 <= moved <= 1.0 + 1e-4, (objective, lv, moved)
    assert r.steps[objective] == 100 and r.objectives[objective]["short"] in ("HM", "VOTE")


def test_worst_includes_the_aimed_attacks_and_is_never_below_any_single_attack():
    task = _peak_task(truth=(6.0, 30.0, 50.0, 9.0, 20.0), c0=12.0, gain=3.0, batch=3)
    assert check_attacks(task, ["pgd", "ifgsm", "worst"]) == ("pgd", "ifgsm", "heatmap", "vote", "worst")
    assert check_attacks(task, ["vote", "pgd", "worst"]) == ("vote", "pgd", "heatmap", "worst")
    assert check_attacks(task, ["pgd", "ifgsm"]) == ("pgd", "ifgsm")  # no worst: nothing added
    levels = [0.5, 2.0]
    r = robustness_eval(task, levels, attacks=("pgd", "ifgsm", "worst"), pgd_steps=8, ifgsm_steps=4, progress=False)
    attacks = ["pgd", "ifgsm", "heatmap", "vote"]
    assert r.worst_of == attacks and list(r.noisy) == [*attacks, "worst"]
    for lv in levels:
        worst = r.sample_scores("worst", lv)
        per = {a: r.sample_scores(a, lv) for a in attacks}
        src = r.per_sample["worst_from"][f"{lv:g}"]
        for i, w in enumerate(worst):
            assert all(w >= per[a][i] for a in attacks)  # MRE: higher is worse
            assert per[src[i]][i] == w == max(per[a][i] for a in attacks)
        assert all(r.noisy["worst"][lv]["MRE"] >= r.noisy[a][lv]["MRE"] - 1e-9 for a in attacks)
    lines = masking_check(r)
    assert any(line.startswith("worst case at level 2 from: ") for line in lines), lines


def test_aimed_radius_is_the_analytic_distance():
    """Broken when the error doubles (2 px -> 4 px): the peak must move 2 px, i.e. L2 noise 2 / gain."""
    task = _peak_task(truth=(6.0, 6.0), c0=8.0, gain=4.0)
    r = robustness_eval(task, [0.25, 1.0], attacks=(), progress=False,
                        radius=RadiusSpec(objectives=("vote", "heatmap"), steps=80))
    assert r.radius["objectives"] == ["vote", "heatmap"]
    for obj in ("vote", "heatmap"):
        assert r.radius["values"][obj] == pytest.approx([0.5, 0.5], rel=0.03)
    with pytest.raises(ValueError, match="unknown radius objective 'votes'.*'heatmap', 'vote'"):
        RadiusSpec(objectives=("votes",)).resolved(task, [1.0])


# -- fingerprints ------------------------------------------------------------------------------------
def _hand_fingerprint(task, levels, attacks, pgd_steps=100, ifgsm_steps=10, seed=0):
    cfg = [task.name, task.metric, levels, list(attacks), pgd_steps, ifgsm_steps, seed, "eval-2", None]
    return hashlib.sha1(json.dumps(cfg).encode()).hexdigest()[:16]


def test_fingerprint_changes_only_with_the_attack_list():
    seg = _seg_task()
    for attacks in (["pgd", "ifgsm"], ["pgd", "mce", "worst"]):  # no aimed objectives: as before
        assert fingerprint(seg, [1.0, 2.0], attacks, 100, 10, 0) == _hand_fingerprint(seg, [1.0, 2.0], attacks)
    lm = _peak_task()
    assert fingerprint(lm, [1.0], ["pgd", "ifgsm"], 100, 10, 0) == _hand_fingerprint(lm, [1.0], ["pgd", "ifgsm"])
    assert fingerprint(lm, [1.0], ["pgd", "ifgsm", "worst"], 100, 10, 0) == _hand_fingerprint(
        lm, [1.0], ["pgd", "ifgsm", "heatmap", "vote", "worst"])


# -- detection: a hand-built detector ------------------------------------------------------------------
TRUE_BOX = torch.tensor([[10.0, 10.0, 30.0, 20.0]])  # 20 x 10 px


class LinearDetector(nn.Module):
    """Two predictions of class 0: a box on the true box whose logit is ``l0 + g * <x, u>`` and
    whose x-position moves by ``s * <x, v>``; a distractor far away whose logit follows ``<x, v>``."""

    def __init__(self, n: int, l0=3.0, g=1.0, s=0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        u, v = torch.randn(2, n, generator=gen)
        v = v - (v @ u) / (u @ u) * u  # orthogonal directions
        self.register_buffer("u", u / u.norm())
        self.register_buffer("v", v / v.norm())
        self.l0, self.g, self.s = l0, g, s

    def forward(self, x):
        z = x.flatten(1)
        a, b = z @ self.u, z @ self.v
        shift = self.s * b if self.s else 0.0 * b
        box = TRUE_BOX.expand(len(z), 4) + torch.stack([shift, 0 * b, shift, 0 * b], 1)
        far = torch.tensor([[40.0, 40.0, 50.0, 50.0]]).expand(len(z), 4) + 0 * b[:, None]
        logits = torch.stack([self.l0 + self.g * a, 2.0 + b], 1)
        return torch.stack([box, far], 1), logits[..., None]          # [N, 2, 4], [N, 2, 1]


class DetTask(DetectionObjectives, EvalTask):
    """Score: the confidence of the true box's own prediction times its IoU with the true box."""

    name = "toydet"
    metric = "hit"
    bounds = None

    def __init__(self, model, n_images=2):
        self.model, self.n = model, n_images

    def batches(self):
        yield EvalBatch(key="0", x=torch.zeros(self.n, 1, 16, 16), target=None)

    def loss_terms(self, x, target, repeats):
        return self.model(x)[1][:, 0, 0]

    def detection_predictions(self, x):
        boxes, logits = self.model(x)
        return boxes, torch.nn.functional.logsigmoid(logits)

    def detection_truth(self, target, repeats):
        return [(TRUE_BOX, torch.tensor([0]))] * (self.n * repeats)

    def measure(self, x, target):
        boxes, logits = self.model(x)
        iou = torch.stack([box_iou_pairs(b[:1], TRUE_BOX)[0, 0] for b in boxes])
        return [{"conf": float(torch.sigmoid(lg[0, 0])), "iou": float(u)} for lg, u in zip(logits, iou)]

    def reduce(self, stats):
        rows = [row for s in stats for row in s]
        return {"hit": sum(r["conf"] * r["iou"] for r in rows) / len(rows),
                "conf": sum(r["conf"] for r in rows) / len(rows), "IoU": sum(r["iou"] for r in rows) / len(rows)}

    def sample_scores(self, stats):
        return [r["conf"] * r["iou"] for r in stats]

    def trivial_stats(self, target):
        return {"no detection": [{"conf": 0.0, "iou": 0.0}] * self.n}


def test_suppress_lowers_the_true_boxs_confidence_as_computed_by_hand():
    """logit = 3 + <x, u>: the best L2 noise of norm eps lowers it to 3 - eps; the distractor's
    logit (another direction) is not the objective's business and stays where it is."""
    task = DetTask(LinearDetector(256, l0=3.0, g=1.0))
    levels = [1.0, 2.0, 5.0]
    r = robustness_eval(task, levels, attacks=("suppress",), pgd_steps=100, progress=False)
    for lv in levels:
        stats = r.per_sample["stats"]["suppress"][f"{lv:g}"]
        for row in stats:  # per image: the logit fell by (almost) exactly eps, never more
            lowered = (3.0 - math.log(row["conf"] / (1 - row["conf"]))) / lv
            assert 0.97 <= lowered <= 1.0 + 1e-4, (lv, lowered)
            assert row["iou"] == pytest.approx(1.0)
    # and by hand on the terms: minus the logit of the matched prediction, floored at logit(0.001)
    boxes, logits = task.model(torch.zeros(1, 1, 16, 16))
    t = suppress_terms(boxes, torch.nn.functional.logsigmoid(logits), [(TRUE_BOX, torch.tensor([0]))])
    assert t.tolist() == pytest.approx([-3.0], abs=1e-5)
    low = suppress_terms(boxes, torch.full_like(logits, math.log(1e-5)), [(TRUE_BOX, torch.tensor([0]))])
    assert low.tolist() == pytest.approx([-math.log(1e-3 / (1 - 1e-3))], rel=1e-4)  # floored
    assert r.floor == 0.0 and r.floor_from == "no detection"


def test_displace_moves_the_box_off_as_computed_by_hand():
    """x-shift = 4 <x, v>: a 20-px-wide box shifted by s has IoU (20 - s) / (20 + s); the best
    noise of norm eps shifts it by 4 eps."""
    task = DetTask(LinearDetector(256, l0=3.0, g=0.0, s=4.0))
    levels = [0.5, 1.0, 2.0]
    r = robustness_eval(task, levels, attacks=("displace",), pgd_steps=100, progress=False)
    for lv in levels:
        for row in r.per_sample["stats"]["displace"][f"{lv:g}"]:
            shift = 20 * (1 - row["iou"]) / (1 + row["iou"])  # IoU (20 - s) / (20 + s) solved for s
            assert 0.97 <= shift / (4.0 * lv) <= 1.0 + 1e-4, (lv, shift)
    boxes, logits = task.model(torch.zeros(1, 1, 16, 16))
    t = displace_terms(boxes, torch.nn.functional.logsigmoid(logits), [(TRUE_BOX, torch.tensor([0]))])
    assert t.tolist() == pytest.approx([-1.0], abs=1e-5)  # the overlapping prediction sits on the box


def test_detection_worst_takes_the_aimed_attacks_and_names_them_in_the_report(tmp_path):
    task = DetTask(LinearDetector(256, l0=3.0, g=1.0, s=2.0), n_images=3)
    r = robustness_eval(task, [1.0, 2.0], attacks=("pgd", "worst"), pgd_steps=10, progress=False)
    assert r.worst_of == ["pgd", "suppress", "displace"]
    md = write_report({"STD": r}, tmp_path)["md"].read_text()
    assert "**SUP: 10-step PGD aimed at the metric (suppress): the class confidence" in md
    assert "**DIS: 10-step PGD aimed at the metric (displace)" in md
    assert "worst case per sample over pgd, suppress, displace" in md
    assert "| Method | W.1 from | W.2 from |" in md
    lines = md.splitlines()
    row = lines[lines.index("| Method | W.1 from | W.2 from |") + 2]
    assert row.startswith("| STD | ")
    for cell in row.split("|")[2:4]:  # per level: every one of the 3 samples named once, e.g. "DIS 2, SUP 1"
        parts = [p.split() for p in cell.split(",")]
        assert {name for name, _ in parts} <= {"P", "SUP", "DIS"} and sum(int(k) for _, k in parts) == 3
    back = EvalResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.objectives == r.objectives and back.floor_from == "no detection"
    assert to_markdown({"STD": back}) == to_markdown({"STD": r})


# -- the masking check's floor (issue 28) ---------------------------------------------------------------
def _seg_task(n=6, seed=0):
    from amat_hooks.zoo.segnets import TinySegNet, seg_loss_terms
    from amat_hooks.zoo.shapes import textured_segmentation

    x, y = textured_segmentation(n, 16, seed=seed)
    torch.manual_seed(seed)
    return SegmentationEvalTask(TinySegNet().eval(), x, y, seg_loss_terms, batch_size=4)


def test_segmentation_floor_is_the_better_constant_mask():
    from amat_hooks.demo.loop import trivial_adi

    task = _seg_task()
    r = robustness_eval(task, [1.0], attacks=("pgd",), pgd_steps=2, progress=False)
    assert r.floor == pytest.approx(trivial_adi(task.y))  # the demo's own hand-written constant-mask ADI
    assert r.floor_from in ("constant mask of label 0", "constant mask of label 1")


def _result(clean, adv, rnd, floor=0.25, floor_from="constant mask of label 1"):
    return EvalResult(task="seg", metric="ADI", higher_is_better=True, levels=[2.0, 8.0], clean={"ADI": clean},
                      noisy={"pgd": {2.0: {"ADI": clean}, 8.0: {"ADI": adv}}}, batches=1, seconds=0.0,
                      random={8.0: {"ADI": rnd}}, floor=floor, floor_from=floor_from)


def test_a_floor_not_reached_by_an_attack_that_beats_noise_is_a_note_about_the_levels():
    lines = masking_check(_result(0.85, 0.60, 0.84))
    assert not [line for line in lines if line.startswith("WARNING")], lines
    assert lines[0].startswith("levels: the pgd drives ADI to 0.6000 at the largest level 8 (clean 0.8500, "
                               "floor 0.2500 = constant mask of label 1) and beats random noise")
    # the same shortfall when the attack is no better than noise: both masking warnings
    lines = masking_check(_result(0.85, 0.60, 0.61))
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 2 and "drives ADI only to 0.6000" in warnings[0] and "no better than noise" in warnings[1]
    # at the constant mask's score: near the floor, whatever the all-background mask would score
    lines = masking_check(_result(0.85, 0.27, 0.80))
    assert lines[0].startswith("masking check: the pgd drives ADI to 0.2700 at level 8 (floor 0.2500") and \
        not [line for line in lines if line.startswith("WARNING")]
