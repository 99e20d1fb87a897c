"""Algorithm 1 lines 9-12 and section 2.2/2.3 on hand-computed numbers."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from amat_hooks.margins import MarginMismatchError, MarginStore
from amat_hooks.thresholds import OnlineThreshold, accepted, xi_from_losses


def test_unknown_ids_start_at_init_and_are_not_stored_by_get():
    s = MarginStore(init=0.5, delta=0.5)
    assert s.get(["a", ("case", 3)]).tolist() == [0.5, 0.5]
    assert len(s) == 0


def test_grow_and_refine_on_hand_computed_numbers():
    s = MarginStore(init=1.0, delta=1.0)
    s.update(["a", "b", "c"], [True, False, True], [1.0, 0.4, 0.9])
    # a: 1 + 1 = 2;  b: (0.4 + 1)/2 = 0.7;  c: 2
    assert s.get(["a", "b", "c"]).tolist() == pytest.approx([2.0, 0.7, 2.0])
    s.update(["a", "b"], [False, True], [1.5, 0.7])
    # a: (1.5 + 2)/2 = 1.75; b: 0.7 + 1 = 1.7
    assert s.get(["a", "b"]).tolist() == pytest.approx([1.75, 1.7])


def test_duplicate_ids_apply_in_order():
    s = MarginStore(init=2.0, delta=1.0)
    s.update(["x", "x", "x"], [True, False, True], [0.0, 1.0, 0.0])
    # 2 -> 3 -> (1 + 3)/2 = 2 -> 3
    assert s.get(["x"]).item() == pytest.approx(3.0)
    assert s.summary()["updates"] == 3


def test_max_margin_caps_growth():
    s = MarginStore(init=1.0, delta=2.0, max_margin=2.5)
    s.update(["a"], [True], [0.0])
    assert s.get(["a"]).item() == 2.5


def test_state_round_trip_is_exact_and_validated(tmp_path):
    s = MarginStore(init=0.3, delta=0.3, dataset_id="D1")
    s.update([("c1", 4), ("c2", 0), "img.png"], [True, False, True], [0.1, 0.123456789, 0.2])
    path = tmp_path / "m.pt"
    torch.save(s.state_dict(), path)
    t = MarginStore(init=0.3, delta=0.3, dataset_id="D1")
    t.load_state_dict(torch.load(path, weights_only=False))
    assert t.ids() == s.ids()
    assert torch.equal(t.values(), s.values())
    # JSON round trip (string ids) too
    j = MarginStore(init=0.3, delta=0.3)
    j.update(["a.png", "b.png"], [True, False], [0.0, 0.05])
    k = MarginStore(init=0.3, delta=0.3)
    k.load_state_dict(json.loads(json.dumps(j.state_dict())))
    assert torch.equal(k.values(), j.values())
    with pytest.raises(MarginMismatchError, match="step 0.3 != 0.5"):
        MarginStore(init=0.3, delta=0.5).load_state_dict(s.state_dict())
    with pytest.raises(MarginMismatchError, match="dataset 'D1' != 'D2'"):
        MarginStore(init=0.3, delta=0.3, dataset_id="D2").load_state_dict(s.state_dict())
    forced = MarginStore(init=0.3, delta=0.5)
    forced.load_state_dict(s.state_dict(), force=True)
    assert torch.equal(forced.values(), s.values())


def test_summary_numbers():
    s = MarginStore(init=1.0, delta=1.0)
    s.update(list("abcd"), [True, True, False, False], [0, 0, 0.0, 0.5])
    # a, b -> 2; c -> 0.5; d -> 0.75
    sm = s.summary()
    assert sm["count"] == 4 and sm["min"] == 0.5 and sm["max"] == 2.0
    assert sm["mean"] == pytest.approx((2 + 2 + 0.5 + 0.75) / 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init=0.5, delta=0.0), "delta"), (dict(init=0.5, delta=-1.0), "delta"),
    (dict(init=-0.1, delta=0.5), "init"), (dict(init=1.0, delta=1.0, max_margin=0.5), "max_margin"),
])
def test_bad_store_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MarginStore(**kwargs)


def test_update_rejects_missing_ids_tensor_ids_and_nan_norms():
    s = MarginStore(init=1.0, delta=1.0)
    with pytest.raises(ValueError, match="sample ids are missing"):
        s.update(None, [True], [0.0])
    with pytest.raises(TypeError, match="hashable"):
        s.update([torch.tensor(1)], [True], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        s.update(["a"], [False], [float("nan")])
    with pytest.raises(ValueError, match="one accepted flag"):
        s.update(["a", "b"], [True], [0.0, 0.0])


def test_xi_rules_on_known_numbers():
    losses = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [6.0, 60.0]])
    # mean = 3, 30; population std = sqrt(((4+1+0+9)/4)) = sqrt(3.5)
    assert xi_from_losses(losses, "mean").tolist() == pytest.approx([3.0, 30.0])
    sd = 3.5 ** 0.5
    assert xi_from_losses(losses, "mean+2std").tolist() == pytest.approx([3 + 2 * sd, 30 + 20 * sd], rel=1e-6)
    assert xi_from_losses(torch.tensor([-1.0, -3.0]), "mean").tolist() == [-2.0]  # nnU-Net: negative
    with pytest.raises(ValueError, match="unknown xi rule"):
        xi_from_losses(losses, "median")


def test_multi_term_acceptance_needs_every_term_below():
    xi = torch.tensor([1.0, 2.0, 3.0])
    terms = torch.tensor([[0.9, 1.9, 2.9], [1.0, 0.0, 0.0], [0.0, 2.1, 0.0], [0.0, 0.0, float("nan")]])
    assert accepted(terms, xi).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="3 thresholds but the loss has 2"):
        accepted(terms[:, :2], xi)


def test_online_threshold_cumulative_equals_batch_formula():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(100, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + 4
    est = OnlineThreshold(rule="mean+2std", momentum=None)
    for chunk in data.split(17):
        est.update(chunk)
    assert est.xi().tolist() == pytest.approx(xi_from_losses(data, "mean+2std").tolist(), rel=1e-5)
    ema = OnlineThreshold(rule="mean", momentum=0.5)
    ema.update(torch.tensor([[2.0]]))
    ema.update(torch.tensor([[4.0]]))
    assert ema.xi().item() == pytest.approx(3.0)  # 2 + 0.5 * (4 - 2)


GLOO_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from amat_hooks.margins import MarginStore
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    s = MarginStore(init=1.0, delta=1.0)
    if rank == 0:
        s.update(["a", "b"], [True, False], [0.0, 0.5])     # a=2, b=0.75
    else:
        s.update(["c", "a"], [True, False], [0.0, 0.2])     # c=2, a: after rank0's 2 -> (0.2+2)/2
    s.sync()
    print("TABLE", dict(zip(s.ids(), s.values().tolist())), flush=True)
    s.update(["b"], [True], [0.0]) if rank == 1 else None  # second round: only rank 1 moves
    s.sync()
    print("TABLE2", dict(zip(s.ids(), s.values().tolist())), flush=True)
    dist.destroy_process_group()
""")


def test_sync_merges_two_gloo_ranks_identically(tmp_path):
    script = tmp_path / "sync.py"
    script.write_text(GLOO_SCRIPT)
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(init)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    tables = [dict(eval(line.split(" ", 1)[1])) for o, _ in outs for line in o.splitlines() if line.startswith("TABLE ")]
    tables2 = [dict(eval(line.split(" ", 1)[1])) for o, _ in outs for line in o.splitlines() if line.startswith("TABLE2")]
    expected = {"a": (0.2 + 2.0) / 2, "b": 0.75, "c": 2.0}
    for t in tables:
        assert t == pytest.approx(expected)
    for t in tables2:
        assert t == pytest.approx({**expected, "b": 1.75})


def test_margin_table_digest_changes_with_one_bit():
    """The one digest of a margin table (logged on resume by every host): the ids and the exact
    float64 bits of the values."""
    import numpy as np

    store = MarginStore(init=1.0, delta=1.0)
    store.update([("a", 0), ("b", 3)], torch.tensor([True, False]), torch.tensor([1.0, 0.7]))
    d = store.digest()
    same = MarginStore(init=1.0, delta=1.0)
    same.load_state_dict(store.state_dict())
    assert len(d) == 16 and d == same.digest()
    state = store.state_dict()
    bumped = MarginStore(init=1.0, delta=1.0)
    bumped.load_state_dict(dict(state, values=[np.nextafter(state["values"][0], 10.0), state["values"][1]]))
    assert bumped.digest() != d
    other = MarginStore(init=1.0, delta=1.0)
    other.load_state_dict(dict(state, ids=[["a", 0], ["b", 4]]))
    assert other.digest() != d
