"""Initial margins (issue 29, item 1): measured against analytic radii, and what the margin
table does with them (floor at Delta, cap, resume keeps the trained values, other ids refused)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from amat_hooks.config import AdvConfig, AdvConfigError
from amat_hooks.evaluation.radius import xi_radii
from amat_hooks.evaluation.task import EvalTask
from amat_hooks.initial_margins import (InitialMarginsError, initial_margins_record, read_initial_margins,
                                        write_initial_margins)
from amat_hooks.margins import MarginMismatchError, MarginStore


class LinearTermTask(EvalTask):
    """One loss term per sample, t(x) = w.x + b: it crosses xi at the L2 distance
    (xi - t(x)) / ||w|| along w (0 if it is already past xi)."""

    name = "linear"

    def __init__(self, w: torch.Tensor, b: float) -> None:
        self.model = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.model.weight.copy_(w.reshape(1, -1))
            self.model.bias.fill_(b)

    def batches(self):
        yield from ()

    def loss_terms(self, x, target, repeats):
        return self.model(x.flatten(1))

    def measure(self, x, target):
        return []

    def reduce(self, stats):
        return {}


def test_radii_equal_the_analytic_distance_to_the_xi_boundary():
    torch.manual_seed(0)
    w = torch.tensor([3.0, -4.0, 0.0, 0.0])  # ||w|| = 5
    task = LinearTermTask(w, b=0.5)
    x = torch.randn(6, 4)
    xi = 2.0
    t = (x @ w + 0.5)
    expected = ((xi - t).clamp(min=0) / 5.0).tolist()
    got = xi_radii(task, x, None, [xi], max_radius=10.0, steps=200)
    for g, e in zip(got, expected):
        assert g is not None
        if e == 0:
            assert g == 0.0
        else:  # an upper bound within the search's final precision
            assert e - 1e-4 <= g <= e * 1.01 + 1e-4, (g, e)
    far = xi_radii(task, x[:1] * 0, None, [100.0], max_radius=3.0, steps=50)
    assert far == [None]  # (100 - 0.5) / 5 = 19.9 > 3: not broken within the search


def _file(tmp_path, ids, radii, max_radius=4.0, name="init.json"):
    rec = initial_margins_record("toy", ids, radii, max_radius=max_radius, steps=10, xi=[1.0], rule="mean",
                                 term_names=["loss"], seconds=0.1)
    return write_initial_margins(tmp_path / name, rec)


def test_the_table_starts_at_the_radius_floored_at_delta_and_capped(tmp_path):
    init = read_initial_margins(_file(tmp_path, [0, 1, 2, 3], [0.0, 1.25, None, 7.0], max_radius=8.0))
    assert init.values == {0: 0.0, 1: 1.25, 2: 8.0, 3: 7.0} and init.n_capped == 1
    store = MarginStore(init=0.5, delta=0.5, max_margin=6.0, initial=init.values, initial_digest=init.digest)
    assert store.get([0, 1, 2, 3]).tolist() == [0.5, 1.25, 6.0, 6.0]
    # Algorithm 1 unchanged from there: accepted +Delta, refused (||noise|| + E) / 2
    store.update([0, 1], torch.tensor([True, False]), torch.tensor([0.5, 1.25]))
    assert store.get([0, 1]).tolist() == [1.0, 1.25]
    with pytest.raises(MarginMismatchError, match="sample id 9 has no initial margin.*--margins-out"):
        store.get([1, 9])


def test_resume_keeps_the_trained_margins_and_refuses_another_start(tmp_path):
    a = read_initial_margins(_file(tmp_path, [0, 1], [2.0, 3.0]))
    store = MarginStore(init=0.5, delta=0.5, initial=a.values, initial_digest=a.digest)
    store.update([0, 1], torch.tensor([True, False]), torch.tensor([2.0, 1.0]))
    trained = store.get([0, 1]).tolist()
    assert trained == [2.5, 2.0]
    state = json.loads(json.dumps(store.state_dict()))
    again = MarginStore(init=0.5, delta=0.5, initial=a.values, initial_digest=a.digest)
    again.load_state_dict(state)
    assert again.get([0, 1]).tolist() == trained  # not the initial 2.0, 3.0
    b = read_initial_margins(_file(tmp_path, [0, 1], [2.0, 3.5], name="other.json"))
    with pytest.raises(MarginMismatchError, match="initial margins"):
        MarginStore(init=0.5, delta=0.5, initial=b.values, initial_digest=b.digest).load_state_dict(state)
    with pytest.raises(MarginMismatchError, match="initial margins"):
        MarginStore(init=0.5, delta=0.5).load_state_dict(state)


def test_tuple_ids_survive_the_file(tmp_path):
    init = read_initial_margins(_file(tmp_path, [("case_1", 3), ("case_1", 4)], [1.0, None]))
    assert init.values == {("case_1", 3): 1.0, ("case_1", 4): 4.0}


def test_bad_files_and_modes_are_refused_before_training(tmp_path):
    with pytest.raises(AdvConfigError, match="no initial-margin file"):
        AdvConfig(mode="amat", delta=0.5, margin_init=str(tmp_path / "none.json")).validate()
    xi_like = tmp_path / "xi.json"
    xi_like.write_text(json.dumps({"kind": "amat-hooks xi"}))
    with pytest.raises(AdvConfigError, match="not an initial-margin file"):
        AdvConfig(mode="amat", delta=0.5, margin_init=str(xi_like)).validate()
    good = _file(tmp_path, [0], [1.0])
    with pytest.raises(AdvConfigError, match="for --adv amat"):
        AdvConfig(mode="sat", eps=1.0, margin_init=str(good)).validate()
    bad = json.loads(good.read_text())
    bad["radii"] = [-1.0]
    (tmp_path / "neg.json").write_text(json.dumps(bad))
    with pytest.raises(InitialMarginsError, match="negative"):
        read_initial_margins(tmp_path / "neg.json")
    pol = AdvConfig(mode="amat", delta=0.5, margin_init=str(good)).build_policy(log=lambda m: None)
    assert pol.margins.get([0]).tolist() == [1.0]
    assert pol.state_dict()["margins"]["initial"]["digest"] == read_initial_margins(good).digest
