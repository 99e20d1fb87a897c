"""STD/SAT/AMAT steps on a linear model whose optimum and boundary are known exactly."""
import pytest
import torch
from torch import nn

from amat_hooks import AMAT, SAT, STD, AttackSettings, BoundLoss
from amat_hooks.config import AdvConfig, AdvConfigError


class Linear(nn.Module):
    """f(x) = w . x per sample, ||w|| = 1: the L2 attack moves straight along w."""

    def __init__(self, dim: int = 4):
        super().__init__()
        w = torch.zeros(dim)
        w[0] = 1.0
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).sum(1)


def bound(model):
    return BoundLoss(terms=lambda x: model(x).unsqueeze(1))


EXACT = AttackSettings(steps=10, random_start=False, refine_steps=20)


def test_std_returns_the_clean_loss():
    m = Linear()
    x = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    out = STD().step(m, x, None, bound(m))
    assert out.loss.item() == pytest.approx(2.0) and out.attack is None


def test_sat_loss_is_mean_of_clean_and_worst_case_noisy():
    m = Linear()
    x = torch.tensor([[1.0, 0, 0, 0], [3.0, 5, 0, 0]])
    out = SAT(0.5, EXACT).step(m, x, None, bound(m))
    # clean mean 2; the worst L2 noise of size 0.5 adds 0.5 * ||w|| = 0.5 to each sample
    assert out.clean_loss.item() == pytest.approx(2.0)
    assert out.noisy_loss.item() == pytest.approx(2.5, abs=1e-5)
    assert out.loss.item() == pytest.approx(2.25, abs=1e-5)
    out.loss.backward()
    assert m.w.grad is not None


def test_amat_grows_accepted_and_refines_crossing_margins():
    m = Linear()
    pol = AMAT(step=0.5, xi=[10.0], attack=EXACT)
    x = torch.tensor([[0.0, 0, 0, 0], [9.8, 0, 0, 0], [9.9, 0, 0, 0]])
    ids = ["a", "b", "c"]
    out = pol.step(m, x, ids, bound(m))
    # a: noisy 0.5 < 10 -> accepted -> 0.5 + 0.5 = 1.0
    # b: boundary at distance 0.2 -> refine (0.2 + 0.5) / 2 = 0.35
    # c: boundary at distance 0.1 -> (0.1 + 0.5) / 2 = 0.3
    assert out.accepted.tolist() == [True, False, False]
    assert out.attack.noise_norm.tolist() == pytest.approx([0.5, 0.2, 0.1], abs=1e-4)
    assert pol.margins.get(ids).tolist() == pytest.approx([1.0, 0.35, 0.3], abs=1e-4)
    # the training loss is (clean + noisy)/2 with the noisy loss evaluated at x_adv
    noisy = m(out.attack.x_adv).mean()
    assert out.loss.item() == pytest.approx(((x[:, 0].mean() + noisy) / 2).item(), abs=1e-6)
    # second epoch: a's margin is now 1.0 -> noisy 1.0 < 10 -> 1.5
    pol.step(m, x, ids, bound(m))
    assert pol.margins.get(["a"]).item() == pytest.approx(1.5)


def test_amat_without_boundary_stop_would_not_refine():
    """Why the boundary matters: on the sphere ||noise|| = E, so (||noise|| + E)/2 = E."""
    m = Linear()
    pol = AMAT(step=0.5, xi=[10.0], attack=EXACT)
    pol.boundary = lambda: None  # plain PGD
    pol.step(m, torch.tensor([[9.8, 0, 0, 0]]), ["b"], bound(m))
    assert pol.margins.get(["b"]).item() == pytest.approx(0.5)


def test_amat_multi_term_condition():
    m = Linear(2)
    pol = AMAT(step=1.0, xi=[5.0, 0.5], attack=EXACT)
    terms = lambda x: torch.stack([m(x), 0.1 * x[:, 1].abs()], 1)
    x = torch.tensor([[0.0, 0.0], [0.0, 9.0]])
    out = pol.step(m, x, ["p", "q"], BoundLoss(terms=terms))
    # p: terms (1, 0) at x_adv -> both below -> grow; q: term 2 = 0.9 >= 0.5 from the start -> refine
    assert out.accepted.tolist() == [True, False]
    assert pol.margins.get(["p"]).item() == pytest.approx(2.0)
    assert pol.margins.get(["q"]).item() < 1.0


def test_amat_online_xi_uses_clean_losses():
    m = Linear()
    pol = AMAT(step=0.5, xi=None, xi_rule="mean", attack=EXACT, xi_momentum=None)
    x = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    out = pol.step(m, x, ["a", "b"], bound(m))
    assert pol.xi().tolist() == pytest.approx([2.0])  # mean of the clean losses 1 and 3
    # a: boundary at 1.0 > 0.5 -> grows; b: already above xi -> crossing at ~0 -> 0.25
    assert pol.margins.get(["a", "b"]).tolist() == pytest.approx([1.0, 0.25], abs=1e-4)
    assert out.accepted.tolist() == [True, False]


def test_nan_sample_keeps_its_margin_and_is_counted():
    m = Linear()

    def terms(x):
        t = m(x)
        return torch.stack([t, torch.where(torch.arange(2) == 1, torch.tensor(float("nan")), t)], 1)

    pol = AMAT(step=0.5, xi=[10.0, 10.0], attack=EXACT)
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = pol.step(m, torch.zeros(2, 4), ["ok", "bad"], BoundLoss(terms=terms))
    assert "bad" not in pol.margins and pol.margins.get(["ok"]).item() == 1.0
    assert pol.nan_samples == 1 and out.updated.tolist() == [True, False]


def test_amat_requires_ids():
    m = Linear()
    with pytest.raises(ValueError, match="needs sample ids"):
        AMAT(step=0.5, xi=[1.0]).step(m, torch.zeros(2, 4), None, bound(m))


def test_policy_state_round_trip_and_mode_mismatch():
    m = Linear()
    a = AMAT(step=0.5, xi=[10.0], attack=EXACT)
    a.step(m, torch.zeros(2, 4), [1, 2], bound(m))
    b = AMAT(step=0.5, xi=[10.0], attack=EXACT)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.margins.values(), b.margins.values())
    with pytest.raises(ValueError, match="trained with --adv amat"):
        SAT(1.0).load_state_dict(a.state_dict())


@pytest.mark.parametrize("cfg, match", [
    (dict(mode="pgdx"), "unknown --adv mode 'pgdx'; choose one of: none, sat, amat"),
    (dict(mode="sat"), "--adv sat needs a noise level"),
    (dict(mode="sat", eps=0.0), "--adv-eps must be > 0"),
    (dict(mode="sat", eps=-2.0), "--adv-eps must be > 0"),
    (dict(mode="amat"), "--adv amat needs a step size"),
    (dict(mode="amat", step=-1.0), "--adv-step must be > 0"),
    (dict(mode="amat", step=1.0, steps=0), "--adv-steps must be an integer >= 1"),
    (dict(mode="amat", step=1.0, xi_rule="max"), "unknown --adv-xi-rule"),
])
def test_config_errors_name_the_flag(cfg, match):
    with pytest.raises(AdvConfigError, match=match.replace("(", r"\(")):
        AdvConfig(**cfg).validate()


def test_config_from_env_args_and_dict_round_trip():
    import argparse

    cfg = AdvConfig.from_env({"AMAT_MODE": "sat", "AMAT_EPS": "5", "AMAT_STEPS": "7", "AMAT_XI": "1,2"})
    assert (cfg.mode, cfg.eps, cfg.steps, cfg.xi) == ("sat", 5.0, 7, [1.0, 2.0])
    assert cfg.label == "SAT5"
    assert AdvConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(AdvConfigError, match="AMAT_STEPS='x'"):
        AdvConfig.from_env({"AMAT_STEPS": "x"})
    p = argparse.ArgumentParser()
    AdvConfig.add_arguments(p)
    ns = p.parse_args(["--adv", "STD"])
    assert AdvConfig.from_args(ns).mode == "none"
    ns = p.parse_args(["--adv", "amat", "--adv-step", "0.5", "--adv-xi", "0.1,0.2,0.3"])
    c = AdvConfig.from_args(ns)
    assert c.step == 0.5 and c.xi == [0.1, 0.2, 0.3]
    assert isinstance(c.build_policy(), AMAT)
