"""The two protocols (paper's text, authors' code): every setting of the authors' column
against a hand-computed expectation (docs/protocols.md)."""
import math

from pathlib import Path

import pytest
import torch
from torch import nn

from amat_hooks import AMAT, SAT, AdvConfig, AdvConfigError, AttackSettings, BoundLoss, MarginStore
from amat_hooks.protocols import XI_PRESETS, protocol_settings
from amat_hooks.thresholds import huber_location_scale, xi_from_losses


# -- resolution ------------------------------------------------------------------------------------
def test_protocol_columns_per_trainer_and_explicit_settings_win():
    paper = AdvConfig(mode="amat", delta=1.0).resolved("landmark")
    assert (paper.pgd_steps, paper.alpha, paper.update, paper.refine, paper.start, paper.clamp) == \
        (10, 2.5, "visit", "half", "ball", "none")
    a = AdvConfig(mode="amat", delta=1.0, protocol="authors").resolved("landmark")
    assert (a.pgd_steps, a.alpha, a.update, a.accept_iterates, a.refine, a.start, a.attack_bn, a.clamp, a.terms) == \
        (20, 5.0, "epoch", "all", "none", "sphere", "train", "input", "authors")
    assert a.max_margin == 10.0 and a.label == "AMAT-authors"  # the cap: 10 Delta
    n = AdvConfig(mode="sat", eps=2.0, protocol="authors").resolved("nnunet")
    assert (n.alpha, n.sat_loss) == (4.0, "noisy") and n.label == "SAT2-authors"
    assert AdvConfig(mode="amat", delta=1, protocol="authors").resolved("yolov5").refine == "floor"
    assert AdvConfig(mode="amat", delta=1).resolved("yolov5").clamp == "input"  # pixels stay pixels
    own = AdvConfig(mode="amat", delta=1.0, protocol="authors", pgd_steps=7, refine="half").resolved("landmark")
    assert own.pgd_steps == 7 and own.refine == "half" and own.alpha == 5.0
    with pytest.raises(AdvConfigError, match="unknown --adv-refine 'sometimes'; choose one of: half, floor, none"):
        AdvConfig(mode="amat", delta=1.0, refine="sometimes").validate()
    with pytest.raises(AdvConfigError, match="unknown --adv-protocol 'mine'"):
        AdvConfig(mode="amat", delta=1.0, protocol="mine").validate()
    assert set(protocol_settings("authors", "generic")) == set(protocol_settings("paper", "nnunet"))


def test_authors_xi_presets_are_the_published_constants():
    cfg = AdvConfig(mode="amat", delta=1.0, protocol="authors").resolved("yolov5").with_xi_preset()
    assert cfg.xi == pytest.approx([0.03965024, 0.060259447, 0.04034234]) and "train_AMAT.py:352-354" in cfg.xi_source
    lm = AdvConfig(mode="amat", delta=1.0, protocol="authors").resolved("landmark").with_xi_preset()
    assert lm.xi == pytest.approx([0.5 * 0.026233636243294278, 0.027737605627997527, 0.027738130267788035])
    hip = AdvConfig(mode="amat", delta=0.5, protocol="authors").resolved("nnunet").with_xi_preset("Dataset004_Hippocampus")
    assert hip.xi[1] == pytest.approx(1 - 0.8065869)
    assert AdvConfig(mode="amat", delta=1.0).resolved("yolov5").with_xi_preset().xi is None  # paper: no preset
    assert all(src.startswith("SarielMa/amat_conf@d0aa94e") for _, src in XI_PRESETS.values())


# -- margins: per-epoch updates, refine floor and none, cap ------------------------------------------
def test_per_epoch_updates_with_draws_with_replacement():
    """Slice a visited 3 times, passing twice, grows by Delta once; slice b failing 3 times is
    refined once from the epoch's visits: E_new = (E_new + |noise|) / 2 in visit order, seeded
    with E; slice c is not visited."""
    s = MarginStore(init=1.0, delta=0.5, update="epoch")
    s.update(["c"], [True], [1.0])
    s.end_epoch()
    assert s.get(["c"]).tolist() == [1.5]
    s.update(["a", "b", "a"], [True, False, False], [1.0, 0.8, 1.0])
    s.update(["b", "a", "b"], [False, True, False], [0.6, 1.0, 1.0])
    assert s.get(["a", "b", "c"]).tolist() == [1.0, 1.0, 1.5]  # nothing moves inside the epoch
    assert s.end_epoch() == 2
    expected_b = (((1.0 + 0.8) / 2 + 0.6) / 2 + 1.0) / 2  # 0.875
    assert s.get(["a", "b", "c"]).tolist() == pytest.approx([1.5, expected_b, 1.5])
    visit = MarginStore(init=1.0, delta=0.5)  # the paper: every visit counts
    visit.update(["a", "b", "a"], [True, False, False], [1.0, 0.8, 1.0])
    visit.update(["b", "a", "b"], [False, True, False], [0.6, 1.0, 1.0])
    assert visit.get(["a"]).tolist() == pytest.approx([((1.5 + 1.0) / 2) + 0.5])


def test_refine_rules_and_the_cap():
    for refine, expected in (("half", (0.1 + 0.6) / 2), ("floor", 0.5), ("none", 0.6)):
        s = MarginStore(init=0.6, delta=0.5, refine=refine)
        s.update(["x"], [False], [0.1])
        assert s.get(["x"]).item() == pytest.approx(expected), refine
    cfg = AdvConfig(mode="amat", delta=0.5, protocol="authors").resolved("landmark")
    s = MarginStore(init=0.5, delta=0.5, max_margin=cfg.max_margin, refine=cfg.refine)
    for _ in range(12):
        s.update(["x"], [True], [0.0])
    assert s.get(["x"]).item() == pytest.approx(5.0)  # 10 Delta, then no more


# -- the attack: start, every-iterate acceptance, BatchNorm ---------------------------------------
def test_sphere_start_radius_is_max_of_e_minus_delta_and_delta_capped_at_e():
    seen = []

    def terms(x):
        seen.append(x.detach().clone())
        return x.flatten(1).sum(1)

    x = torch.zeros(3, 50)
    pol = AMAT(delta=0.5, xi=[1e9], attack=AttackSettings(steps=1, start="sphere"))
    pol.margins.load_state_dict({**pol.margins.state_dict(), "ids": [0, 1, 2], "values": [2.0, 0.6, 0.3]})
    pol.perturb(None, x, [0, 1, 2], terms)
    assert seen[0].norm(dim=1).tolist() == pytest.approx([1.5, 0.5, 0.3], rel=1e-5)


def test_every_iterate_acceptance_fails_a_sample_that_crossed_and_fell_back():
    """Column 0 pushes x up along one axis; column 1 (no gradient) is 10 only near x = 0.3,
    which PGD passes at iterate 3 of 6 and leaves by the last one (x = 0.6)."""
    def loss(x):
        bump = 10 * torch.exp(-((x[:, 0] - 0.3) / 0.05) ** 2)
        return torch.stack([x[:, 0], bump.detach()], 1)

    x = torch.zeros(1, 2)
    out = {}
    for accept in ("last", "all"):
        pol = AMAT(delta=0.5, init=1.0, xi=[1e6, 5.0], accept_iterates=accept,
                   attack=AttackSettings(steps=6, step_size=0.1, random_start=False))
        step = pol.step(None, x, ["s"], BoundLoss(terms=loss))
        assert step.attack.x_adv[0, 0].item() == pytest.approx(0.6, abs=1e-6)
        out[accept] = (bool(step.accepted[0]), pol.margins.get(["s"]).item())
    assert out["last"] == (True, pytest.approx(1.5))                # Algorithm 1: the returned iterate passes
    assert out["all"] == (False, pytest.approx((0.6 + 1.0) / 2))    # the authors: iterate 3 failed


@pytest.mark.parametrize("bn, changes", [("frozen", False), ("train", True)])
def test_batchnorm_running_statistics_during_training_attacks(bn, changes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    before = model[1].running_mean.clone()
    pol = SAT(1.0, AttackSettings(steps=3, bn=bn))
    pol.perturb(model, torch.randn(8, 4), None, lambda z: model(z).sum(1))
    assert (not torch.equal(model[1].running_mean, before)) is changes


def test_noisy_only_sat_loss():
    x = torch.ones(2, 3)
    loss = BoundLoss(terms=lambda z: (z ** 2).sum(1))
    paper = SAT(1.0, AttackSettings(steps=2)).step(None, x, None, loss)
    noisy = SAT(1.0, AttackSettings(steps=2), loss="noisy").step(None, x, None, loss)
    assert paper.loss.item() == pytest.approx(((paper.clean_loss + paper.noisy_loss) / 2).item())
    assert noisy.loss.item() == pytest.approx(noisy.noisy_loss.item())


# -- xi statistics -------------------------------------------------------------------------------------
def _huber_by_hand(a, c=1.5, tol=1e-8):
    """Huber's proposal 2 written out independently (lists, no torch): median and MAD start."""
    v = sorted(a)
    med = lambda s: (s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)  # noqa: E731
    mu = med(v)
    scale = med(sorted(abs(x - mu) for x in v)) / 0.6744897501960817
    p = math.erf(c / math.sqrt(2))
    gamma = p + c * c * (1 - p) - 2 * c * math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    for _ in range(30):
        nmu = sum(min(max(x, mu - c * scale), mu + c * scale) for x in v) / len(v)
        num = sum((x - nmu) ** 2 if abs(x - mu) <= c * scale else (c * scale) ** 2 for x in v)
        nscale = math.sqrt(num / ((len(v) - 1) * gamma))
        if abs(scale - nscale) <= nscale * tol and abs(mu - nmu) <= nscale * tol:
            return nmu, nscale
        mu, scale = nmu, nscale
    raise AssertionError("no convergence")


def test_huber_xi_equals_an_independent_iteration_and_statsmodels():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(150, generator=g, dtype=torch.float64) ** 3
    a[:4] *= 20  # outliers the Huber statistic resists
    mu, scale = huber_location_scale(a)
    hm, hs = _huber_by_hand(a.tolist())
    assert (mu, scale) == (pytest.approx(hm, rel=1e-9), pytest.approx(hs, rel=1e-9))
    xi = xi_from_losses(torch.stack([a, 2 * a], 1), "huber+3")
    assert xi.tolist() == pytest.approx([hm + 3 * hs, 2 * (hm + 3 * hs)], rel=1e-6)
    assert xi_from_losses(torch.stack([a, 2 * a], 1), "max").tolist() == pytest.approx([float(a.max()), 2 * float(a.max())])
    sm = pytest.importorskip("statsmodels.robust.scale")
    m2, s2 = sm.Huber()(a.double().numpy())
    assert (mu, scale) == (pytest.approx(float(m2), rel=1e-9), pytest.approx(float(s2), rel=1e-9))


def test_xi_presets_by_name_on_the_command_line_and_in_the_environment():
    """The authors' published constants by name, with their source file recorded."""
    import argparse

    from amat_hooks.config import AdvConfig, AdvConfigError
    from amat_hooks.protocols import XI_PRESETS

    p = argparse.ArgumentParser()
    AdvConfig.add_arguments(p)
    cfg = AdvConfig.from_args(p.parse_args(["--adv", "amat", "--adv-step", "3.5", "--adv-xi", "authors:yolov5"]))
    assert cfg.xi == pytest.approx([0.03965024, 0.060259447, 0.04034234])
    assert cfg.xi_source.startswith("preset authors:yolov5 (SarielMa/amat_conf@d0aa94e yolov5/train_AMAT.py:352-354")
    env = AdvConfig.from_env({"AMAT_MODE": "amat", "AMAT_STEP": "0.5", "AMAT_XI": "authors:nnunet-hippocampus"})
    assert env.xi == pytest.approx(XI_PRESETS["authors:nnunet-hippocampus"][0])
    assert "preset authors:nnunet-hippocampus" in env.xi_source
    with pytest.raises(SystemExit):
        p.parse_args(["--adv", "amat", "--adv-xi", "authors:yolo8"])
    with pytest.raises(AdvConfigError, match="unknown xi preset 'authors:yolo8'; the presets are authors:landmark"):
        AdvConfig.from_env({"AMAT_MODE": "amat", "AMAT_XI": "authors:yolo8"})


def test_a_resume_under_another_protocol_is_refused_like_another_delta():
    from amat_hooks.config import AdvConfig
    from amat_hooks.policies import SemanticsMismatchError

    authors = AdvConfig(mode="amat", delta=0.5, xi=[1.0], protocol="authors").build_policy(kind="landmark")
    authors.margins.update(["a"], torch.tensor([True]), torch.tensor([0.5]))
    state = authors.state_dict()
    paper = AdvConfig(mode="amat", delta=0.5, xi=[1.0]).build_policy(kind="landmark")
    with pytest.raises(SemanticsMismatchError, match=r"other protocol settings \(--adv-accept-iterates all != last; "
                                                     r"--adv-start sphere != ball; --adv-attack-bn train != frozen\)"):
        paper.load_state_dict(state)
    again = AdvConfig(mode="amat", delta=0.5, xi=[1.0], protocol="authors").build_policy(kind="landmark")
    again.load_state_dict(state)  # the same protocol resumes
    assert again.margins.state_dict()["pending"] == state["margins"]["pending"]
    paper.load_state_dict(state, force=True)  # --adv-force-resume


def test_a_statistic_that_cannot_be_computed_is_left_out_unless_it_is_the_chosen_one(monkeypatch):
    """Huber's iteration may not converge (statsmodels raises too): calibrate still writes the
    other statistics, and refuses only when Huber is the rule asked for."""
    import amat_hooks.state as state
    from amat_hooks.state import XiFileError, xi_record

    real = state.xi_from_losses

    def no_huber(t, rule):
        if rule.startswith("huber"):
            raise ValueError("Huber's location and scale did not converge in 30 iterations")
        return real(t, rule)

    monkeypatch.setattr(state, "xi_from_losses", no_huber)
    terms = torch.tensor([[0.1], [0.2], [0.4]], dtype=torch.float64)
    rec = xi_record("landmark", terms, ["heatmap"], "mean+2std")
    assert rec["xi"]["huber+3"] is None and "did not converge" in rec["not_computed"]["huber+3"]
    assert rec["xi"]["mean"] == pytest.approx([0.7 / 3])
    from amat_hooks.state import read_xi_file, write_xi_file

    import tempfile
    path = write_xi_file(Path(tempfile.mkdtemp()) / "xi.json", rec)  # a file with a None statistic reads back
    assert read_xi_file(path).thresholds("mean") == pytest.approx([0.7 / 3])
    with pytest.raises(XiFileError, match="no thresholds for rule 'huber\\+3'"):
        read_xi_file(path).thresholds("huber+3")
    with pytest.raises(XiFileError, match=r"--rule huber\+3: Huber's location .* choose another statistic"):
        xi_record("landmark", terms, ["heatmap"], "huber+3")
