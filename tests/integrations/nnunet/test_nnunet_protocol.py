"""Issue 27 through the real ``nnUNetv2_train``: two short runs under ``AMAT_PROTOCOL=authors``.

The authors' nnU-Net trainer accepts on the hard Dice of the noisy output (the acceptance
column 1 - max-class hard Dice, compared with xi by ``<``) and changes margins once per
epoch: a slice drawn several times in an epoch grows by Delta once. With xi = (never
tested, 2) every visit passes, so after one epoch every visited slice holds exactly 2 Delta,
also the slices drawn twice (nnU-Net draws with replacement; AMAT_SEED fixes which: fewer
distinct slices than draws). With xi = (never tested, 1e-6) no visit
passes (that needs a perfect Dice): the epoch's refine over full-radius noise keeps Delta.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("nnunetv2")

from test_nnunet import BIN, DATASET_ID, _amat_state, _env, _fold, _log, _margins, _run, _train, prepared_dataset  # noqa: E402,E501

pytestmark = pytest.mark.slow

AMAT = "nnUNetTrainerAMAT"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepared_dataset(tmp_path_factory)


@pytest.mark.parametrize("xi,accepted", [("1e30,2", True), ("1e30,1e-6", False)], ids=["all-pass", "none-pass"])
def test_authors_protocol_dice_acceptance_and_per_epoch_updates(root, tmp_path, xi, accepted):
    results = tmp_path / "res"
    _train(root, AMAT, nnUNet_results=str(results), AMAT_EPOCHS="1", AMAT_ITERS="3", AMAT_VAL_ITERS="1",
           AMAT_STEPS="2", AMAT_STEP="0.5", AMAT_XI=xi, AMAT_PROTOCOL="authors", AMAT_SEED="0")
    fold = results / _fold(root, AMAT).relative_to(root / "res")
    state = _amat_state(fold / "checkpoint_final.pth")
    cfg = state["config"]
    assert (cfg["protocol"], cfg["kind"], cfg["terms"], cfg["update"], cfg["accept_iterates"], cfg["alpha"],
            cfg["pgd_steps"]) == ("authors", "nnunet", "authors", "epoch", "all", 4.0, 2)
    assert state["xi"] == pytest.approx([float(v) for v in xi.split(",")], rel=1e-6)  # float32 on the device
    plans = json.loads((root / "pre" / "Dataset990_AMATShapes" / "nnUNetPlans.json").read_text())
    draws = 3 * int(plans["configurations"]["2d"]["batch_size"])  # 1 epoch x 3 iterations x batch
    table = state["policy"]["margins"]
    margins = _margins(state)
    assert table["update"] == "epoch" and table["pending"] == []
    # every draw is recorded; fewer distinct slices than draws: some slice was drawn twice (AMAT_SEED=0)
    assert table["updates"] == draws and len(margins) < draws
    if accepted:  # ... and still grew by Delta once
        assert all(v == pytest.approx(1.0) for v in margins.values()), margins  # 0.5 + Delta, once
    else:
        assert all(v == pytest.approx(0.5, rel=1e-6) for v in margins.values()), margins
    log = _log(fold, "Epoch 0")
    assert "authors protocol" in log
    # the batches went through the trainer's one adapter object, named once per run
    assert log.count("adapter: nnU-Net (case, slice) batches, the trainer's own loss per sample") == 1
    if accepted:  # rows 12-14: the authors' evaluation of this model through amat eval nnunet
        out = tmp_path / "eval"
        p = _run([str(BIN / "amat"), "eval", "nnunet", str(DATASET_ID), "2d", "0", "--models", f"AMAT={AMAT}",
                  "--levels", "1", "--pgd-steps", "2", "--ifgsm-steps", "2", "--protocol", "authors", "--no-progress",
                  "--out", str(out)], _env(root, nnUNet_results=str(results)))
        res = json.loads((out / "robustness.json").read_text())["AMAT"]
        assert res["protocol"] == {"protocol": "authors", "pgd_step": 0.05, "ifgsm_step": 0.05, "pgd_start": "sphere",
                                   "model_mode": "eval", "samples": "every_class"}
        assert "holding every foreground class of their case" in res["scored"]
        assert "Protocol authors: PGD step 0.05 eps, IFGSM step 0.05 eps" in p.stdout
