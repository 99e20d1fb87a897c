"""Algorithm 1 (the default semantics) through the real ``nnUNetv2_train`` (issues 11, 14).

With a fixed xi that every noisy loss is under (nnU-Net's loss CE - Dice is >= -1, so
xi = 100), every visit grows the sample's margin by Delta; with one that none is under
(xi = -2, what a from-scratch model sees for a long time when xi comes from a trained STD
model), every margin holds at Delta: the noise is at full radius, so
(||x - x~|| + E) / 2 = E. The expectations need nothing but the number of visits, which
is the number of training samples drawn (epochs x iterations x batch size).
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("nnunetv2")

from test_nnunet import _amat_state, _fold, _log, _margins, _train, prepared_dataset  # noqa: E402

pytestmark = pytest.mark.slow

AMAT = "nnUNetTrainerAMAT"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepared_dataset(tmp_path_factory)


@pytest.mark.parametrize("xi,accepted", [("100", True), ("-2", False)], ids=["all-accepted", "none-accepted"])
def test_fixed_xi_margins_grow_by_delta_or_hold(root, tmp_path, xi, accepted):
    results = tmp_path / "res"
    _train(root, AMAT, nnUNet_results=str(results), AMAT_EPOCHS="1", AMAT_ITERS="2", AMAT_VAL_ITERS="1",
           AMAT_STEPS="2", AMAT_STEP="0.5", AMAT_XI=xi)
    fold = results / _fold(root, AMAT).relative_to(root / "res")
    state = _amat_state(fold / "checkpoint_final.pth")
    assert state["config"]["boundary"] == "none" and state["config"]["delta"] == 0.5
    assert state["xi"] == [float(xi)] and state["policy"]["config"]["xi_source"] == "environment AMAT_XI"
    plans = json.loads((root / "pre" / "Dataset990_AMATShapes" / "nnUNetPlans.json").read_text())
    visits = 2 * int(plans["configurations"]["2d"]["batch_size"])  # 1 epoch x 2 iterations x batch
    table = state["policy"]["margins"]
    assert table["updates"] == visits
    margins = _margins(state)
    if accepted:  # E = 0.5 * (1 + visits of the sample), and the visits add up
        assert all((v / 0.5) == round(v / 0.5) and v >= 1.0 for v in margins.values()), margins
        assert sum(v / 0.5 - 1 for v in margins.values()) == visits
    else:  # held at Delta = 0.5 (up to the float32 noise norm)
        assert all(v == pytest.approx(0.5, rel=1e-6) for v in margins.values()), margins
    assert "boundary=none" in _log(fold, "Epoch 0")
