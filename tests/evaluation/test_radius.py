"""The minimal-norm attack (each sample's robust radius) against analytic distances."""
import pytest
import torch
from torch import nn

from amat_hooks.evaluation.radius import min_norm


def _hyperplane(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 5, 5, generator=g)
    x = torch.randn(n, 1, 5, 5, generator=g)
    side = torch.sign((x * w).flatten(1).sum(1))

    def step(z, it, steps):  # terms: push across the plane; broken: crossed it
        s = (z * w).flatten(1).sum(1) * side
        return -s, s <= 0

    return x, w, step, ((x * w).flatten(1).sum(1)).abs() / w.norm()


def test_min_norm_radius_is_the_distance_to_a_hyperplane():
    x, w, step, dist = _hyperplane()
    res = min_norm(step, x, max_radius=float(dist.max()) * 3, steps=100)
    assert res.found.all()
    assert torch.all(res.radius >= dist * (1 - 1e-4))           # never below the true distance
    assert torch.allclose(res.radius, dist, rtol=0.01)           # within the radius precision
    assert torch.allclose((res.x_adv - x).flatten(1).norm(dim=1), res.radius, rtol=1e-4)
    assert torch.all(step(res.x_adv, 0, 1)[1])                   # the point returned is broken


def test_min_norm_zero_inside_and_inf_beyond_the_search():
    x, w, step, dist = _hyperplane()

    def step2(z, it, steps):
        t, b = step(z, it, steps)
        return t, b | (torch.arange(len(z)) == 0)  # sample 0: broken without noise

    res = min_norm(step2, x, max_radius=float(dist[1:].min()) / 2, steps=40)
    assert res.radius[0] == 0 and res.found[0]
    assert torch.all(torch.isinf(res.radius[1:])) and not res.found[1:].any()
    assert torch.equal(res.x_adv[1:], x[1:])


def test_min_norm_respects_bounds_model_state_and_argument_checks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 5, 5)

    def step(z, it, steps):
        out = model(z).flatten(1).mean(1)
        return out, out > 10.0  # never broken

    res = min_norm(step, x, max_radius=2.0, steps=8, bounds=(0.0, 1.0), model=model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.all(torch.isinf(res.radius))
    with pytest.raises(TypeError, match=r"\(terms, broken\)"):
        min_norm(lambda z, i, s: z.sum(1), x, max_radius=1.0, steps=2)
    with pytest.raises(ValueError, match="max_radius must be"):
        min_norm(step, x, max_radius=0.0, steps=2)


