"""Issue 15: segmentation objectives (SegPGD, CosPGD, masked CE) against hand-computed
weights in 2D and 3D, the per-sample worst case, the robust radius against an analytic
distance, the gradient-masking check on a model with a zeroed gradient, resume of a
multi-attack evaluation, reports and older result files."""
import json
import math

import pytest
import torch
from torch import nn

from amat_hooks.attacks import pgd
from amat_hooks.evaluation import (AttackNotSupported, EvalBatch, EvalResult, EvalTask, RadiusSpec, check_attacks,
                                   masking_check, robustness_eval)
from amat_hooks.evaluation.objectives import (ObjectiveLoss, cospgd_weights, objective_terms, segpgd_lambda, segpgd_weights,
                                   supports_segmentation)
from amat_hooks.evaluation.report import write_report
from amat_hooks.evaluation.segmentation import SegmentationEvalTask

LN3 = math.log(3.0)


# -- objectives on hand-computed examples ---------------------------------------------------------
def _two_by_two():
    """Every pixel has logits (0, ln 3): softmax (1/4, 3/4), prediction 1. Labels
    [[1, 0], [1, 1]]: three pixels correct (CE = ln 4/3), one wrong (CE = ln 4)."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = LN3
    labels = torch.tensor([[[1, 0], [1, 1]]])
    return logits, labels


def test_segpgd_weights_and_terms_2x2_by_hand():
    logits, labels = _two_by_two()
    ce_ok, ce_bad = math.log(4 / 3), math.log(4)
    # lambda = t / (2T) (the paper's (t-1)/(2T), t 1-based): 0 at the start, -> 1/2 at the end
    assert segpgd_lambda(0, 10) == 0.0 and segpgd_lambda(2, 10) == pytest.approx(0.1)
    assert segpgd_lambda(None, None) == 0.5
    w = segpgd_weights(logits, labels, 2, 10)
    assert w.flatten().tolist() == pytest.approx([0.9, 0.1, 0.9, 0.9])
    t = objective_terms("segpgd", logits, labels, iteration=2, steps=10)
    assert t.tolist() == pytest.approx([(3 * 0.9 * ce_ok + 0.1 * ce_bad) / 4], rel=1e-6)
    # iteration 0: only the correct pixels count
    t0 = objective_terms("segpgd", logits, labels, iteration=0, steps=10)
    assert t0.tolist() == pytest.approx([3 * ce_ok / 4], rel=1e-6)


def test_cospgd_weights_and_terms_2x2_by_hand():
    logits, labels = _two_by_two()
    # cos((1/4, 3/4), e_y) = p_y / ||p|| with ||p|| = sqrt(10)/4
    cos1, cos0 = 0.75 / (math.sqrt(10) / 4), 0.25 / (math.sqrt(10) / 4)
    assert cos1 == pytest.approx(3 / math.sqrt(10))
    w = cospgd_weights(logits, labels)
    assert w.flatten().tolist() == pytest.approx([cos1, cos0, cos1, cos1], rel=1e-6)
    t = objective_terms("cospgd", logits, labels)
    assert t.tolist() == pytest.approx([(3 * cos1 * math.log(4 / 3) + cos0 * math.log(4)) / 4], rel=1e-6)


def test_masked_ce_counts_only_still_correct_pixels_2x2():
    logits, labels = _two_by_two()
    t = objective_terms("mce", logits, labels)
    assert t.tolist() == pytest.approx([3 * math.log(4 / 3) / 4], rel=1e-6)


def test_objectives_on_a_3d_volume_with_mask_and_ignore_label():
    # [N=1, C=3, D=2, H=1, W=2]: four voxels with hand-picked logits
    vox = [(0.0, 0.0, 0.0), (2.0, 0.0, 0.0), (0.0, 1.0, 3.0), (1.0, 0.0, 0.0)]
    labels_l = [1, 0, 2, 255]          # 255: an ignore label, never counted
    valid_l = [True, True, False, True]  # voxel 2 is padding
    logits = torch.tensor(vox).T.reshape(1, 3, 2, 1, 2)
    labels = torch.tensor(labels_l).reshape(1, 2, 1, 2)
    valid = torch.tensor(valid_l).reshape(1, 2, 1, 2)

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]

    counted = [i for i in range(4) if valid_l[i] and labels_l[i] < 3]  # voxels 0 and 1
    ce = {i: -math.log(softmax(vox[i])[labels_l[i]]) for i in counted}
    pred = {i: max(range(3), key=lambda c: vox[i][c]) for i in counted}  # voxel 0: tie -> class 0 (argmax)
    correct = {i: pred[i] == labels_l[i] for i in counted}
    assert correct == {0: False, 1: True}
    lam = segpgd_lambda(3, 4)  # 3/8
    exp_seg = sum(((1 - lam) if correct[i] else lam) * ce[i] for i in counted) / len(counted)
    cos = {i: softmax(vox[i])[labels_l[i]] / math.sqrt(sum(p * p for p in softmax(vox[i]))) for i in counted}
    exp_cos = sum(cos[i] * ce[i] for i in counted) / len(counted)
    exp_mce = sum(ce[i] for i in counted if correct[i]) / len(counted)
    for name, exp, kw in (("segpgd", exp_seg, dict(iteration=3, steps=4)), ("cospgd", exp_cos, {}),
                          ("mce", exp_mce, {})):
        got = objective_terms(name, logits, labels, valid, **kw)
        assert got.shape == (1,) and got.item() == pytest.approx(exp, rel=1e-5), name
    # the weight maps themselves on the 3D grid
    w = cospgd_weights(logits, labels.clamp(0, 2))
    assert w.shape == (1, 2, 1, 2) and w.flatten()[1].item() == pytest.approx(cos[1], rel=1e-6)


def test_pgd_hands_the_iteration_to_an_iteration_loss():
    seen = []

    class Recorder(ObjectiveLoss.__mro__[1]):  # attacks.IterationLoss
        def terms_at(self, x, iteration, steps):
            seen.append((iteration, steps))
            return (x ** 2).flatten(1).sum(1)

    pgd(Recorder(), torch.randn(2, 3), 1.0, steps=4)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_segpgd_through_pgd_is_the_same_attack_as_a_plain_loss_with_that_schedule():
    """The objective runs in the core loop: SegPGD via ObjectiveLoss equals pgd on a plain
    loss that applies the same lambda schedule (one implementation, no second loop)."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(3, 1, 6, 6)
    y = (x[:, 0] > 0).long()
    task = SegmentationEvalTask(model, x, y, lambda o, t: o.sum((1, 2, 3)))
    calls = iter(range(10))

    def plain(z):
        return objective_terms("segpgd", model(z), y, iteration=next(calls), steps=5)

    a = pgd(ObjectiveLoss(task, "segpgd", {"x": x, "y": y}, 1), x, 1.0, steps=5, generator=torch.Generator().manual_seed(1))
    b = pgd(plain, x, 1.0, steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-6)


# -- tasks ------------------------------------------------------------------------------------------
def _seg_task(n=6, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(n, 1, 8, 8)
    y = (x[:, 0] > 0.3).long()
    loss = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none").flatten(1).mean(1)
    return SegmentationEvalTask(model, x, y, loss, batch_size=2)


class _Linear(nn.Module):
    """Two classes, every output pixel (voxel) with the logit difference w.x: the whole map
    flips at once, at the linear decision boundary's L2 distance |w.x| / ||w||."""

    def __init__(self, w: torch.Tensor, masked: bool = False):
        super().__init__()
        self.w, self.masked = w, masked

    def forward(self, x):
        d = (x.flatten(1) * self.w.flatten()).sum(1)
        out = torch.stack([torch.zeros_like(d), d], 1).view(-1, 2, *([1] * (x.dim() - 2)))
        out = out.expand(-1, -1, *x.shape[2:])
        if self.masked:  # straight-through with a zero backward: same output, no gradient
            out = out.detach() + (out - out.detach()) * 0.0
        return out


def _linear_task(masked=False, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(*shape, generator=g)
    x = torch.randn(8, *shape, generator=g)
    margin = (x.flatten(1) * w.flatten()).sum(1)
    y = (margin > 0).long().view(-1, *([1] * (len(shape) - 1))).expand(-1, *shape[1:]).clone()
    dist = margin.abs() / w.norm()  # analytic L2 distance to the decision boundary
    ce = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none").flatten(1).mean(1)
    return SegmentationEvalTask(_Linear(w, masked), x, y, ce, batch_size=4), dist


class _Detector(EvalTask):
    """A task without the segmentation interface (like YOLO, landmarks)."""

    name = "det"
    metric = "score"

    def __init__(self):
        self.model = nn.Linear(3, 1)

    def batches(self):
        yield EvalBatch(key="0", x=torch.randn(2, 3), target=None)

    def loss_terms(self, x, target, repeats):
        return self.model(x)[:, 0]

    def measure(self, x, target):
        return self.model(x)[:, 0].tolist()

    def reduce(self, stats):
        return {"score": sum(v for s in stats for v in s)}


def test_segmentation_objectives_need_the_interface():
    assert supports_segmentation(_seg_task()) and not supports_segmentation(_Detector())
    with pytest.raises(AttackNotSupported, match="segpgd needs a segmentation task .* the det task supports "
                                                 "--attacks pgd,ifgsm,worst"):
        check_attacks(_Detector(), ["pgd", "segpgd"])
    assert check_attacks(_Detector(), ["pgd", "ifgsm", "worst"]) == ("pgd", "ifgsm", "worst")
    with pytest.raises(ValueError, match="list at least one more"):
        check_attacks(_seg_task(), ["worst"])
    with pytest.raises(ValueError, match="unknown attack 'fgsm'"):
        check_attacks(_seg_task(), ["fgsm"])
    with pytest.raises(AttackNotSupported, match="radius objective mce needs a segmentation task"):
        RadiusSpec(objectives=("mce",)).resolved(_Detector(), [1.0])
    assert RadiusSpec().resolved(_Detector(), [1.0, 3.0]).objectives == ("loss",)
    assert RadiusSpec().resolved(_seg_task(), [1.0, 3.0]) == RadiusSpec(("mce",), 0.5, True, 100, 6.0)


# -- worst ------------------------------------------------------------------------------------------
def test_worst_is_never_above_any_single_attack_per_sample():
    attacks = ("pgd", "ifgsm", "segpgd", "cospgd", "mce")
    r = robustness_eval(_seg_task(8), [0.5, 2.0, 4.0], attacks=(*attacks, "worst"), pgd_steps=4,
                        ifgsm_steps=3, progress=False)
    assert r.worst_of == list(attacks)
    for lv in r.levels:
        worst = r.sample_scores("worst", lv)
        per = {a: r.sample_scores(a, lv) for a in attacks}
        for i, w in enumerate(worst):
            assert all(w <= per[a][i] for a in attacks)
            assert w == min(per[a][i] for a in attacks)  # it is one of them: the worst
            assert per[r.per_sample["worst_from"][f"{lv:g}"][i]][i] == w
        for a in attacks:  # so the worst ADI (a mean of per-sample Dice) is below every attack's
            assert r.noisy["worst"][lv]["ADI"] <= r.noisy[a][lv]["ADI"] + 1e-12
    # the random-noise baseline is kept but never part of the worst case
    assert set(r.random) == set(r.levels) and "random" not in r.noisy


# -- robust radius ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 3, 4, 4)])
def test_radius_of_a_linear_model_is_its_distance_to_the_boundary(shape):
    task, dist = _linear_task(shape=shape)
    r = robustness_eval(task, [0.5, 1.0, 2.0], attacks=(), progress=False,
                        radius=RadiusSpec(steps=100, max_radius=4.0 * float(dist.max())))
    radii = torch.tensor(r.radii())
    # an upper bound (a breaking point was found there), tight to the radius precision (~0.5 %)
    assert torch.all(radii >= dist * (1 - 1e-4))
    assert torch.allclose(radii, dist, rtol=0.02), (radii, dist)
    # the point it found does break the sample (measured again by the task)
    assert all(s < 0.5 for s in r.radius["scores"]["mce"])


def test_radius_curve_matches_the_per_level_evaluation_within_its_tolerance():
    task, dist = _linear_task()
    levels = sorted(float(v) for v in (dist * torch.tensor([0.8, 1.3, 0.9, 1.2, 0.7, 1.25, 0.85, 1.1])))[::2]
    r = robustness_eval(task, levels, attacks=("mce", "pgd", "worst"), pgd_steps=50, progress=False,
                        radius=RadiusSpec(steps=100))
    tol = 0.02
    for attack in ("mce", "worst"):
        per_level = r.unbroken_fraction(attack)
        for lv, a, b in zip(levels, r.radius_curve(), per_level):
            near = int(((dist > lv * (1 - tol)) & (dist < lv * (1 + tol))).sum())  # within the tolerance
            assert abs(a - b) <= near / len(dist) + 1e-9, (attack, lv, a, b)
    # and both follow the analytic curve
    assert r.radius_curve() == pytest.approx([float((dist > lv).float().mean()) for lv in levels])


def test_radius_zero_for_samples_wrong_without_noise_and_inf_beyond_the_search():
    task, dist = _linear_task()
    task.y = 1 - task.y  # every sample wrong already: clean Dice 0 -> broken at radius 0
    r = robustness_eval(task, [1.0], attacks=(), progress=False, radius=RadiusSpec(steps=5))
    assert r.radii() == [0.0] * 8 and r.radius_curve([0.0]) == [0.0]
    task, dist = _linear_task()
    small = float(dist.min()) / 2
    r = robustness_eval(task, [small / 2], attacks=(), progress=False,
                        radius=RadiusSpec(steps=30, max_radius=small))
    assert all(math.isinf(v) for v in r.radii())
    assert "8 of 8 samples not broken within radius" in masking_check(r)[-1]


# -- gradient masking -------------------------------------------------------------------------------
def test_gradient_masking_check_flags_a_zero_gradient_model_with_a_known_radius():
    for masked in (False, True):
        task, dist = _linear_task(masked=masked)
        # every sample's radius is known and below the largest level: a sound attack breaks all
        levels = [float(dist.max()) / 2, 1.5 * float(dist.max())]
        r = robustness_eval(task, levels, attacks=("pgd", "mce", "worst"), pgd_steps=20, progress=False,
                            radius=RadiusSpec(steps=60))
        lines = masking_check(r)
        warnings = [line for line in lines if line.startswith("WARNING")]
        if not masked:
            assert r.noisy["worst"][levels[-1]]["ADI"] == 0.0
            assert warnings == [], lines
            assert torch.allclose(torch.tensor(r.radii()), dist, rtol=0.02)
        else:
            # same model, same outputs, same radii - but the gradient is zero: flagged twice
            assert r.clean["ADI"] == 1.0 and r.noisy["worst"][levels[-1]]["ADI"] > 0.5
            assert len(warnings) == 2, lines
            assert "drives ADI only to" in warnings[0] and "no better than noise" in warnings[1]
            assert all(math.isinf(v) for v in r.radii())  # the radius attack finds nothing either


def test_masking_check_on_lower_is_better_metrics_uses_the_random_baseline_only():
    res = EvalResult(task="t", metric="MRE", higher_is_better=False, levels=[1.0], clean={"MRE": 2.0},
                     noisy={"pgd": {1.0: {"MRE": 2.1}}}, batches=1, seconds=0.0, random={1.0: {"MRE": 2.3}})
    lines = masking_check(res)
    assert lines[0].startswith("masking check: MRE has no floor") and lines[1].startswith("WARNING")


# -- resume, reports, older files -------------------------------------------------------------------
def test_interrupted_multi_attack_evaluation_resumes_to_the_same_numbers(tmp_path):
    kw = dict(attacks=("pgd", "segpgd", "cospgd", "mce", "worst"), pgd_steps=3, progress=False,
              radius=RadiusSpec(steps=10))
    levels = [1.0, 3.0]
    full = robustness_eval(_seg_task(6), levels, **kw)
    state = tmp_path / "eval.jsonl"

    class Interrupt(SegmentationEvalTask):
        calls = 0

        def measure(self, x, target):
            Interrupt.calls += 1
            if Interrupt.calls > 14:  # clean + 4 attacks x 2 levels + 2 random + 1 radius check = 12 per batch
                raise KeyboardInterrupt
            return super().measure(x, target)

    t = _seg_task(6)
    t.__class__ = Interrupt
    with pytest.raises(KeyboardInterrupt):
        robustness_eval(t, levels, state_path=state, **kw)
    assert [json.loads(line)["key"] for line in state.read_text().splitlines()] == ["0"]
    resumed = robustness_eval(_seg_task(6), levels, state_path=state, resume=True, **kw)
    a, b = full.to_dict(), resumed.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    with pytest.raises(ValueError, match="different evaluation"):
        robustness_eval(_seg_task(6), levels, state_path=state, resume=True,
                        **{**kw, "radius": RadiusSpec(steps=10, threshold=0.4)})


def test_report_has_a_block_per_attack_worst_radius_and_masking_and_keeps_every_sample(tmp_path):
    r = robustness_eval(_seg_task(4), [1.0, 2.0], attacks=("pgd", "ifgsm", "mce", "worst"), pgd_steps=2,
                        ifgsm_steps=2, progress=False, radius=RadiusSpec(steps=5))
    paths = write_report({"STD": r, "AMAT": r}, tmp_path)
    md = paths["md"].read_text()
    assert "| Method | ADI | P.1 | P.2 | Avg. | IF.1 | IF.2 | Avg. | AUC_robust |" in md  # the paper's table
    assert "| Method | ADI | MCE.1 | MCE.2 | Avg. | AUC_robust |" in md
    assert "| Method | ADI | W.1 | W.2 | Avg. | AUC_robust |" in md and "the number to quote" in md
    assert md.index("MCE.1") < md.index("W.1")
    assert "**Robust radius**" in md and "| STD (radius) |" in md and "| STD (per level, W) |" in md
    assert "**Gradient-masking check**" in md and "- STD: " in md
    head = paths["csv"].read_text().splitlines()[0].split(",")
    assert head[:10] == ["Method", "ADI", "P.1", "P.2", "Avg.", "IF.1", "IF.2", "Avg.", "AUC_robust", "MCE.1"]
    assert head[-3:] == ["W.2", "W.Avg.", "W.AUC_robust"]
    data = json.loads(paths["json"].read_text())
    back = EvalResult.from_dict(data["AMAT"])
    assert back.per_sample["ids"] == ["0/0", "0/1", "2/0", "2/1"]
    assert back.sample_scores("worst", 2.0) == r.sample_scores("worst", 2.0)
    assert len(back.per_sample["stats"]["mce"]["2"]) == 4 and back.radii() == r.radii()
    for key in ("png", "radii_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 2000


def test_older_result_files_still_read_and_report(tmp_path):
    old = {"task": "segmentation", "metric": "ADI", "higher_is_better": True, "levels": [1.0, 2.0],
           "clean": {"ADI": 0.8, "TVDI": 0.85}, "batches": 1, "seconds": 1.0, "steps": {"pgd": 100, "ifgsm": 10},
           "fingerprint": "abc", "samples": 4, "scored": "4 samples",
           "noisy": {"pgd": {"1.0": {"ADI": 0.6, "TVDI": 0.7}, "2.0": {"ADI": 0.4, "TVDI": 0.5}},
                     "ifgsm": {"1.0": {"ADI": 0.7, "TVDI": 0.7}, "2.0": {"ADI": 0.5, "TVDI": 0.6}}}}
    r = EvalResult.from_dict(old)
    assert r.random == {} and r.radius is None and r.per_sample == {} and r.floor == 0.0
    paths = write_report({"OLD": r}, tmp_path)
    md = paths["md"].read_text()
    assert "| OLD | **0.8000** | **0.6000** | **0.4000** |" in md and "WARNING gradient masking?" in md
    with pytest.raises(ValueError, match="no per-sample scores"):
        r.sample_scores("pgd", 1.0)


# -- the command line -------------------------------------------------------------------------------
def test_eval_command_options_reach_the_core_and_refuse_what_a_task_cannot_run(tmp_path, capsys):
    import argparse

    from amat_hooks.cli.evaluate import run_evaluations
    from amat_hooks.cli.options import add_eval_arguments, parse_threshold
    from amat_hooks.tasks import TaskError

    p = argparse.ArgumentParser()
    add_eval_arguments(p, "1,2", default_out=str(tmp_path))
    args = p.parse_args(["--attacks", "pgd,mce,worst", "--pgd-steps", "2", "--radius", "--radius-steps", "5",
                         "--radius-threshold", "abs:0.3", "--out", str(tmp_path), "--no-progress"])
    assert args.radius_threshold == (0.3, False) and parse_threshold("0.5") == (0.5, True)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_threshold("1.5")
    res = run_evaluations({"A": lambda: _seg_task(4)}, args)
    r = res["A"]
    assert list(r.noisy) == ["pgd", "mce", "worst"] and r.radius["threshold"] == 0.3
    assert r.radius["relative"] is False and r.radius["objectives"] == ["mce"]
    out = capsys.readouterr().out
    assert "W.1" in out and "**Robust radius**" in out and "gradient-masking check" in out
    args.resume = True  # a finished model is reused under the same settings
    run_evaluations({"A": lambda: _seg_task(4)}, args)
    assert "A: already evaluated" in capsys.readouterr().out
    args.resume, args.attacks = False, "pgd,segpgd"
    with pytest.raises(TaskError, match="--attacks segpgd needs a segmentation task"):
        run_evaluations({"D": _Detector}, args)
    args.attacks, args.radius = "none", False
    with pytest.raises(TaskError, match="give at least one attack"):
        run_evaluations({"A": lambda: _seg_task(4)}, args)
