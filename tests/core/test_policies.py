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


def test_amat_default_is_algorithm_1_full_radius():
    """Algorithm 1: x~ = PGD(x, y, E(i)) at full radius; grow by Delta where L1 < xi, else
    E = (||x - x~|| + E) / 2 - which is E itself where the projection binds."""
    m = Linear()
    pol = AMAT(delta=0.5, xi=[10.0], attack=EXACT)
    x = torch.tensor([[0.0, 0, 0, 0], [9.8, 0, 0, 0], [9.9, 0, 0, 0]])
    ids = ["a", "b", "c"]
    out = pol.step(m, x, ids, bound(m))
    # every sample is attacked at its full margin 0.5, along w: noisy terms 0.5, 10.3, 10.4
    assert out.attack.noise_norm.tolist() == pytest.approx([0.5, 0.5, 0.5], abs=1e-5)
    assert out.noisy_terms[:, 0].tolist() == pytest.approx([0.5, 10.3, 10.4], abs=1e-5)
    assert out.accepted.tolist() == [True, False, False]
    # a: 0.5 + 0.5; b, c: (0.5 + 0.5) / 2 = 0.5 (kept)
    assert pol.margins.get(ids).tolist() == pytest.approx([1.0, 0.5, 0.5], abs=1e-5)
    # the training loss is (clean + noisy)/2 with the noisy loss evaluated at x_adv
    noisy = m(out.attack.x_adv).mean()
    assert out.loss.item() == pytest.approx(((x[:, 0].mean() + noisy) / 2).item(), abs=1e-6)
    pol.step(m, x, ids, bound(m))
    assert pol.margins.get(["a"]).item() == pytest.approx(1.5)


def test_amat_margin_sequence_on_a_known_boundary():
    """Clean loss 7, xi 9.5, Delta 1: E = 1 -> 2 -> 3 (noisy 8, 9 < 9.5), then noisy 10 is
    not < 9.5: E = (||noise|| + E) / 2 = (3 + 3) / 2 = 3 on every later visit."""
    m = Linear()
    pol = AMAT(delta=1.0, xi=[9.5], attack=AttackSettings(steps=10))  # random start, as training
    x = torch.tensor([[7.0, 0.3, -0.2, 0.1]])
    seen = []
    for _ in range(5):
        out = pol.step(m, x, ["s"], bound(m))
        assert out.attack.noise_norm.item() == pytest.approx(out.eps.item(), rel=1e-5)  # ||x~ - x|| = E
        seen.append(pol.margins.get(["s"]).item())
    assert seen == pytest.approx([2.0, 3.0, 3.0, 3.0, 3.0], abs=1e-4)


def test_amat_refine_uses_the_measured_noise_norm():
    """Where the projection does not bind (input bounds clip the noise), the refine rule
    takes the measured ||x - x~||: x0 = 0.8 in [0, 1] lets the attack move only 0.2."""
    m = Linear()
    settings = AttackSettings(steps=10, random_start=False, bounds=(0.0, 1.0))
    pol = AMAT(delta=0.5, xi=[0.9], attack=settings)
    out = pol.step(m, torch.tensor([[0.8, 0.5, 0.5, 0.5]]), ["s"], bound(m))
    assert out.attack.noise_norm.item() == pytest.approx(0.2, abs=1e-5)
    assert out.accepted.tolist() == [False]  # noisy loss 1.0 >= 0.9
    assert pol.margins.get(["s"]).item() == pytest.approx((0.2 + 0.5) / 2, abs=1e-5)


@pytest.mark.parametrize("boundary", ["none", "stop"])
def test_clean_loss_above_xi_keeps_the_margin(boundary):
    """The collapse of the old boundary-stop AMAT: a sample already above xi crossed at
    iterate 0 and its margin shrank ~0.6x per visit. Under both semantics it now keeps E
    and is trained on full-radius noise."""
    m = Linear()
    pol = AMAT(delta=1.0, xi=[1.5], attack=AttackSettings(steps=10), boundary=boundary)
    x = torch.tensor([[2.0, 0.0, 0.0, 0.0]])  # clean loss 2.0 >= xi 1.5
    for _ in range(6):
        out = pol.step(m, x, ["hard"], bound(m))
        assert out.attack.noise_norm.item() == pytest.approx(1.0, rel=1e-5)
    assert pol.margins.get(["hard"]).item() == pytest.approx(1.0, abs=1e-5)


def test_boundary_stop_variant_lands_on_the_boundary():
    """--adv-boundary stop: samples that start inside stop at w.x = xi and are refined to
    (distance + E) / 2; a sample whose boundary is outside the ball grows by Delta."""
    m = Linear()
    pol = AMAT(delta=0.5, xi=[10.0], boundary="stop",
               attack=AttackSettings(steps=10, random_start=False, refine_steps=20))
    x = torch.tensor([[0.0, 0, 0, 0], [9.8, 0, 0, 0], [9.9, 0, 0, 0]])
    ids = ["a", "b", "c"]
    out = pol.step(m, x, ids, bound(m))
    assert out.accepted.tolist() == [True, False, False]
    assert out.attack.noise_norm.tolist() == pytest.approx([0.5, 0.2, 0.1], abs=1e-4)
    assert pol.margins.get(ids).tolist() == pytest.approx([1.0, 0.35, 0.3], abs=1e-4)
    assert pol.config()["boundary"] == "stop"


def test_boundary_mode_is_checked_on_resume():
    m = Linear()
    stop = AMAT(delta=0.5, xi=[10.0], attack=EXACT, boundary="stop")
    stop.step(m, torch.zeros(2, 4), [1, 2], bound(m))
    with pytest.raises(ValueError, match="trained with --adv-boundary stop.*resume with --adv-boundary stop"):
        AMAT(delta=0.5, xi=[10.0], attack=EXACT).load_state_dict(stop.state_dict())
    forced = AMAT(delta=0.5, xi=[10.0], attack=EXACT)
    forced.load_state_dict(stop.state_dict(), force=True)
    assert torch.equal(forced.margins.values(), stop.margins.values())
    # a state that records no boundary was not written by this amat-hooks: refused, even forced
    unrecorded = stop.state_dict()
    del unrecorded["config"]["boundary"]
    with pytest.raises(ValueError, match="record no valid --adv-boundary"):
        AMAT(delta=0.5, xi=[10.0], attack=EXACT, boundary="stop").load_state_dict(unrecorded, force=True)


def test_amat_multi_term_condition():
    m = Linear(2)
    pol = AMAT(delta=1.0, xi=[5.0, 0.5], attack=EXACT)
    terms = lambda x: torch.stack([m(x), 0.1 * x[:, 1].abs()], 1)
    x = torch.tensor([[0.0, 0.0], [0.0, 9.0]])
    out = pol.step(m, x, ["p", "q"], BoundLoss(terms=terms))
    # p: terms (<= 1, <= 0.1) at x_adv -> both below -> grow; q: term 2 >= 0.9 > 0.5 -> refine,
    # at full radius (||noise|| = 1) that keeps E = 1
    assert out.accepted.tolist() == [True, False]
    assert pol.margins.get(["p"]).item() == pytest.approx(2.0)
    assert pol.margins.get(["q"]).item() == pytest.approx(1.0, abs=1e-5)


def test_amat_online_xi_uses_clean_losses_and_says_so():
    m = Linear()
    lines = []
    pol = AMAT(delta=0.5, xi=None, xi_rule="mean", attack=EXACT, xi_momentum=None,
               calibrate_hint="amat calibrate demo", log=lines.append)
    x = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    out = pol.step(m, x, ["a", "b"], bound(m))
    assert pol.xi().tolist() == pytest.approx([2.0])  # mean of the clean losses 1 and 3
    # a: noisy 1.5 < 2 -> grows; b: noisy 3.5 -> refine at full radius -> keeps 0.5
    assert pol.margins.get(["a", "b"]).tolist() == pytest.approx([1.0, 0.5], abs=1e-5)
    assert out.accepted.tolist() == [True, False]
    assert len(lines) == 1 and "online estimate" in lines[0] and "amat calibrate demo" in lines[0]
    pol.step(m, x, ["a", "b"], bound(m))
    assert len(lines) == 1  # said once
    assert "online estimate" in pol.config()["xi_source"] and "online estimate" in pol.describe()


def test_given_xi_source_is_recorded():
    pol = AdvConfig(mode="amat", delta=1.0, xi=[0.5], xi_source="calibration file /tmp/xi.json").build_policy()
    assert pol.config()["xi_source"] == "calibration file /tmp/xi.json"
    assert "from calibration file /tmp/xi.json" in pol.describe()


def test_nan_sample_keeps_its_margin_and_is_counted():
    m = Linear()

    def terms(x):
        t = m(x)
        return torch.stack([t, torch.where(torch.arange(2) == 1, torch.tensor(float("nan")), t)], 1)

    pol = AMAT(delta=0.5, xi=[10.0, 10.0], attack=EXACT)
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = pol.step(m, torch.zeros(2, 4), ["ok", "bad"], BoundLoss(terms=terms))
    assert "bad" not in pol.margins and pol.margins.get(["ok"]).item() == 1.0
    assert pol.nan_samples == 1 and out.updated.tolist() == [True, False]


def test_amat_requires_ids():
    m = Linear()
    with pytest.raises(ValueError, match="needs sample ids"):
        AMAT(delta=0.5, xi=[1.0]).step(m, torch.zeros(2, 4), None, bound(m))


def test_policy_state_round_trip_and_mode_mismatch():
    m = Linear()
    a = AMAT(delta=0.5, xi=[10.0], attack=EXACT)
    a.step(m, torch.zeros(2, 4), [1, 2], bound(m))
    b = AMAT(delta=0.5, xi=[10.0], attack=EXACT)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.margins.values(), b.margins.values())
    with pytest.raises(ValueError, match="trained with --adv amat"):
        SAT(1.0).load_state_dict(a.state_dict())
    assert a.config()["boundary"] == "none"


@pytest.mark.parametrize("cfg, match", [
    (dict(mode="pgdx"), "unknown mode 'pgdx' for --adv; choose one of: none, sat, amat"),
    (dict(mode="amat", delta=1.0, boundary="bogus"), "unknown --adv-boundary 'bogus'; choose one of: none, stop"),
    (dict(mode="amat", delta=1.0, alpha=0.0), "--adv-alpha must be > 0"),
    (dict(mode="sat"), "--adv sat needs a noise level"),
    (dict(mode="sat", eps=0.0), "--adv-eps must be > 0"),
    (dict(mode="sat", eps=-2.0), "--adv-eps must be > 0"),
    (dict(mode="amat"), "--adv amat needs a step size"),
    (dict(mode="amat", delta=-1.0), "--adv-step must be > 0"),
    (dict(mode="amat", delta=1.0, pgd_steps=0), "--adv-steps must be an integer >= 1"),
    (dict(mode="amat", delta=1.0, xi_rule="median"), "--adv-xi-rule: unknown xi rule 'median'"),
])
def test_config_errors_name_the_flag(cfg, match):
    with pytest.raises(AdvConfigError, match=match.replace("(", r"\(")):
        AdvConfig(**cfg).validate()


def test_config_from_env_args_and_dict_round_trip():
    import argparse

    cfg = AdvConfig.from_env({"AMAT_MODE": "sat", "AMAT_EPS": "5", "AMAT_STEPS": "7", "AMAT_XI": "1,2"})
    assert (cfg.mode, cfg.eps, cfg.pgd_steps, cfg.xi) == ("sat", 5.0, 7, [1.0, 2.0])
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
    assert c.delta == 0.5 and c.xi == [0.1, 0.2, 0.3]
    assert isinstance(c.build_policy(), AMAT)


def test_names_before_0_2_are_refused_with_the_current_ones():
    """No compatibility shims: the old keywords and JSON names are errors that name the fix."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'"):
        AdvConfig(mode="amat", step=0.5)
    with pytest.raises(AdvConfigError, match=r"unknown adversarial setting\(s\) \['step', 'steps'\]"):
        AdvConfig.from_dict({"mode": "amat", "step": 0.5, "steps": 7})
    assert AdvConfig.from_env({"AMAT_MODE": "amat", "AMAT_STEP": "0.25", "AMAT_STEPS": "3"}).delta == 0.25
    from amat_hooks import MarginMismatchError, MarginStore

    s = MarginStore(init=0.5, delta=0.5)
    s.update(["a"], [True], [0.5])
    state = s.state_dict()
    state["step"] = state.pop("delta")  # a table written by 0.1
    with pytest.raises(MarginMismatchError, match="key 'delta' missing"):
        MarginStore(init=0.5, delta=0.5).load_state_dict(state)
    with pytest.raises(TypeError):
        AMAT(step=0.5, xi=[1.0])