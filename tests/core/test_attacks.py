"""PGD/IFGSM against independent expectations: norm bounds, analytic optima, boundaries."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amat_hooks.attacks import ifgsm, pgd
from amat_hooks.evaluation.run import multi_level


def sq_dist_terms(c):
    """Per-sample ||x - c||^2: the L2 ball maximiser is known analytically."""
    return lambda x: ((x - c) ** 2).flatten(1).sum(1)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(3, 1, 5, 5), (2, 2, 4, 3), (4, 1, 3, 4, 5), (1, 3, 2, 2, 2), (5, 7)]),
    eps_scale=st.floats(0.0, 5.0),
    steps=st.integers(1, 6),
    random_start=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_noise_within_each_samples_ball(shape, eps_scale, steps, random_start, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    eps = torch.rand(shape[0], generator=g) * eps_scale
    w = torch.randn(shape, generator=g)
    res = pgd(lambda z: (torch.sin(z * w) * 3).flatten(1).sum(1), x, eps, steps=steps,
              random_start=random_start, generator=g)
    norms = (res.x_adv - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= eps * (1 + 1e-5) + 1e-6)
    assert torch.allclose(res.noise_norm, norms, atol=1e-5)


def test_linf_bound_and_bounds_clamp():
    x = torch.rand(4, 1, 6, 6)
    res = pgd(lambda z: z.flatten(1).sum(1), x, 0.1, steps=5, norm="linf", bounds=(0.0, 1.0))
    assert (res.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    # the objective increases every pixel: the optimum is min(x + 0.1, 1)
    assert torch.allclose(res.x_adv, (x + 0.1).clamp(max=1.0), atol=1e-5)


def test_eps_zero_is_identity_per_sample():
    x = torch.randn(3, 2, 4, 4)
    eps = torch.tensor([0.0, 1.0, 0.0])
    res = pgd(lambda z: (z ** 2).flatten(1).sum(1), x, eps, steps=4)
    assert torch.equal(res.x_adv[0], x[0]) and torch.equal(res.x_adv[2], x[2])
    assert not torch.equal(res.x_adv[1], x[1])
    assert res.noise_norm[0] == 0 and res.noise_norm[2] == 0


def test_pgd_reaches_the_analytic_maximum_of_a_convex_loss():
    # max_{||d||<=eps} ||x + d - c||^2 = (||x - c|| + eps)^2, at d = eps (x-c)/||x-c||
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g)
    c = torch.randn(6, 1, 8, 8, generator=g)
    eps = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0])
    start = (x - c).flatten(1).norm(dim=1)
    expected = (start + eps) ** 2
    exact = pgd(sq_dist_terms(c), x, eps, steps=10, random_start=False)
    assert torch.allclose(exact.terms[:, 0], expected, rtol=1e-5)
    # From a random start the path length 2.5*eps cannot always rotate onto the optimum,
    # but the loss must rise above the clean loss and above a random point of the sphere.
    rnd = pgd(sq_dist_terms(c), x, eps, steps=100, generator=g)
    assert torch.all(rnd.terms[:, 0] > start ** 2)
    assert torch.all(rnd.terms[:, 0] <= expected * (1 + 1e-5))
    assert torch.all(rnd.terms[:, 0] >= start ** 2 + eps ** 2)  # E over the sphere


def test_ifgsm_has_no_random_start_and_is_deterministic():
    x = torch.randn(2, 1, 5, 5)
    c = torch.zeros_like(x)
    a = ifgsm(sq_dist_terms(c), x, 1.0, steps=10)
    b = ifgsm(sq_dist_terms(c), x, 1.0, steps=10)
    assert torch.equal(a.x_adv, b.x_adv)
    # straight line away from c: exactly along x/||x|| by 10 steps of eps/10
    d = x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(a.x_adv, x + d, atol=1e-5)


def test_boundary_stop_and_bisection_land_on_a_known_boundary():
    # terms = w.x (linear); boundary w.x = xi is at L2 distance (xi - w.x)/||w|| from x.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 6, 6, generator=g)
    w = torch.randn(1, 1, 6, 6, generator=g)
    wn = w.norm()
    lin = (x * w).flatten(1).sum(1)
    dist = torch.tensor([0.3, 0.9, 1.7, 2.5, 10.0])  # last one: boundary outside the ball
    xi = (lin + dist * wn)
    eps = torch.full((5,), 3.0)

    def terms(z):  # per-sample threshold folded into a shifted term so xi can be one scalar
        return ((z * w).flatten(1).sum(1) - xi).unsqueeze(1)

    res = pgd(terms, x, eps, steps=10, random_start=False, boundary=torch.tensor([0.0]), refine_steps=12)
    assert res.crossed.tolist() == [True, True, True, True, False]
    step = 2.5 * 3.0 / 10
    tol = step / 2 ** 12 + 1e-4
    assert torch.allclose(res.noise_norm[:4], dist[:4], atol=tol)
    assert res.noise_norm[4] == pytest.approx(3.0, rel=1e-5)  # ran to the sphere
    # the returned point is on the crossing side of the boundary
    assert torch.all(res.terms[:4, 0] >= 0)


def test_boundary_needs_all_terms_below_xi_to_keep_going():
    x = torch.zeros(2, 4)

    def terms(z):  # term 0 grows with z[0]; term 1 with |z| (sample 1 hits it first)
        return torch.stack([z[:, 0], z.norm(dim=1) * torch.tensor([0.1, 2.0])], 1)

    res = pgd(terms, x, 5.0, steps=50, random_start=False, boundary=[1.0, 1.0], refine_steps=15)
    # sample 0: term0 = d reaches 1 at d=1 (term1 = 0.1 d); sample 1: term1 = 2 d reaches 1 at d=0.5
    assert res.crossed.all()
    assert res.noise_norm[0].item() == pytest.approx(1.0, abs=1e-3)
    assert res.noise_norm[1].item() == pytest.approx(0.5, abs=1e-3)


def test_multi_level_matches_separate_calls():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 4, 4, generator=g)
    c = torch.randn(3, 1, 4, 4, generator=g)
    levels = [0.5, 1.0, 2.0]
    xr, eps = multi_level(levels, x)
    cr = c.repeat(3, 1, 1, 1)
    batched = ifgsm(sq_dist_terms(cr), xr, eps, steps=10)
    for i, l in enumerate(levels):
        single = ifgsm(sq_dist_terms(c), x, l, steps=10)
        assert torch.allclose(batched.x_adv[i * 3:(i + 1) * 3], single.x_adv, atol=1e-6)


def test_model_mode_bn_buffers_and_param_grads_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.2), nn.Conv2d(4, 1, 1))
    model.train()
    model[3].eval()  # mixed modes must be restored module by module
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 6, 6)
    pgd(lambda z: model(z).flatten(1).pow(2).mean(1), x, 1.0, steps=5, model=model)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert after["1.num_batches_tracked"].item() == 0
    assert model.training and model[1].training and not model[3].training
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())


def test_clean_graph_survives_an_attack_on_a_bn_model():
    """The policy runs the clean forward before the attack; its backward must still work."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3))
    x = torch.randn(2, 1, 5, 5)
    clean = model(x).pow(2).mean()
    pgd(lambda z: model(z).flatten(1).pow(2).mean(1), x, 0.5, steps=2, model=model)
    clean.backward()
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-1.0, steps=3), "eps must be finite and >= 0"),
    (dict(eps=torch.ones(2), steps=3), r"shape \[B\]=\[3\]"),
    (dict(eps=1.0, steps=0), "steps must be an integer >= 1"),
    (dict(eps=1.0, steps=3, step_size=-0.1), "step_size must be finite and >= 0"),
    (dict(eps=1.0, steps=3, norm="l1"), "unknown norm"),
    (dict(eps=float("nan"), steps=3), "eps must be finite"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=match):
        pgd(lambda z: z.sum(1), x, **kwargs)


def test_loss_fn_returning_a_batch_mean_is_rejected():
    with pytest.raises(ValueError, match="per-sample loss terms of shape"):
        pgd(lambda z: z.sum(), torch.randn(3, 4), 1.0, steps=2)


def test_nan_terms_freeze_that_sample_and_are_reported():
    x = torch.randn(3, 4)

    def terms(z):
        t = (z ** 2).sum(1)
        return torch.where(torch.arange(3) == 1, torch.full_like(t, float("nan")), t)

    res = pgd(terms, x, 1.0, steps=3, random_start=False)
    assert res.finite.tolist() == [True, False, True]
    assert torch.equal(res.x_adv[1], x[1])
    assert math.isfinite(res.noise_norm.sum().item())


def test_attack_works_when_called_under_no_grad():
    x = torch.randn(2, 3)
    with torch.no_grad():
        res = ifgsm(lambda z: (z ** 2).sum(1), x, 1.0, steps=5)
    assert torch.all(res.noise_norm > 0.99)


def test_detached_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="does not depend on its input"):
        pgd(lambda z: z.detach().sum(1), torch.randn(2, 3), 1.0, steps=2)


def test_iteration_loss_sees_every_iteration_and_plain_losses_are_unchanged():
    from amat_hooks.attacks import IterationLoss

    seen = []

    class Sched(IterationLoss):
        def terms_at(self, z, iteration, steps):
            seen.append(iteration)
            return (z ** 2).flatten(1).sum(1) * (1 + (iteration or 0))

    x = torch.randn(2, 3)
    res = pgd(Sched(), x, 1.0, steps=3, random_start=False)
    assert seen == [0, 1, 2]
    res.terms  # the returned point: the plain call (iteration None)
    assert seen == [0, 1, 2, None]
