"""Resume points of the nnU-Net trainers through the real ``nnUNetv2_train`` (issue 14, 11):
an interrupted short AMAT run continues with ``--c`` from the epoch after its last
``checkpoint_latest.pth`` with that checkpoint's margin table, bit for bit; ``--c`` with
another Delta or other training semantics is refused with the variables and the fixes,
and ``AMAT_FORCE_RESUME=1`` continues anyway.
"""
from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from test_nnunet import (BIN, DATASET_ID, REPO, UMASK, _amat_state, _env, _fold, _log, _margins,  # noqa: E402
                         _train, prepared_dataset, stderr_reason, table_digest)

pytestmark = pytest.mark.slow

AMAT = "nnUNetTrainerAMAT"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepared_dataset(tmp_path_factory)


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_interrupted_run_continues_from_its_last_epoch(root, tmp_path):
    """Interrupt (Ctrl-C) a 3-epoch AMAT run in its second epoch; checkpoint_latest.pth of
    epoch 0 is there (interval 1); --c trains epochs 1 and 2 starting from that margin
    table bit for bit, and the logger's per-epoch series continue."""
    results = tmp_path / "res"
    settings = dict(nnUNet_results=str(results), AMAT_EPOCHS="3", AMAT_ITERS="2", AMAT_VAL_ITERS="1",
                    AMAT_STEPS="2", AMAT_XI_SOURCE="online", AMAT_SAVE_EVERY="1")
    cmd = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", AMAT, "-device", "cpu"]
    env = _env(root, PYTHONUNBUFFERED="1", **settings)
    # SIGINT back to its default: a background shell (nohup ... &) starts us with it ignored,
    # and Python turns it into KeyboardInterrupt only if it is not ignored at start-up
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, umask=UMASK,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stdout:  # nnU-Net prints "<time>: Epoch 1" after epoch 0's checkpoints
            seen.append(line)
            if re.search(r": Epoch 1\s*$", line):
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "".join(seen[-20:])
    fold = results / _fold(root, AMAT).relative_to(root / "res")
    latest = fold / "checkpoint_latest.pth"
    assert latest.is_file() and not (fold / "checkpoint_final.pth").exists()
    assert (latest.stat().st_mode & 0o777) == 0o666 & ~UMASK  # the mode a plain open gives
    saved = _checkpoint(latest)
    assert saved["current_epoch"] == 1  # written at the end of epoch 0: continue at epoch 1
    table = saved["amat_hooks"]["policy"]["margins"]
    batch = _batch_size(root)
    assert table["updates"] == 2 * batch  # epoch 0: two batches
    reason = next(ln for ln in err.splitlines() if ln.startswith("amat-hooks: error: "))
    assert reason == ("amat-hooks: error: interrupted in epoch 1; the same nnUNetv2_train command with --c "
                      "continues from checkpoint_latest.pth (written after epoch 0)")
    assert reason in _log(fold)

    p = _train(root, AMAT, "--c", **settings)
    log = _log(fold, "continues at epoch 1")
    assert f"restored AMAT state from {latest} (continues at epoch 1): " in log
    assert f"table sha256 {table_digest(table)}" in log  # the saved table, bit for bit
    epochs = re.findall(r": Epoch (\d+) ?$", log, re.M)
    assert epochs == ["1", "2"], epochs
    assert "continuing at epoch 1" in log
    final = _checkpoint(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 3 and not latest.exists()  # nnU-Net removes latest when done
    assert final["logging"]["amat_margin_mean"][0] == saved["logging"]["amat_margin_mean"][0]
    assert len(final["logging"]["amat_margin_mean"]) == 3
    after = final["amat_hooks"]["policy"]["margins"]
    assert after["updates"] == table["updates"] + 2 * 2 * batch  # two more epochs of two batches
    old, new = _margins(saved["amat_hooks"]), _margins(final["amat_hooks"])
    assert set(old) <= set(new)
    assert p.returncode == 0


def _batch_size(root: Path) -> int:
    import json

    plans = json.loads((root / "pre" / "Dataset990_AMATShapes" / "nnUNetPlans.json").read_text())
    return int(plans["configurations"]["2d"]["batch_size"])


# -- --c with other settings than the checkpoint's --------------------------------------------
@pytest.fixture(scope="module")
def stop_run(root, tmp_path_factory) -> Path:
    """AMAT trained with the boundary-stop variant (AMAT_BOUNDARY=stop), 1 epoch x 1 iteration."""
    results = tmp_path_factory.mktemp("stop") / "res"
    _train(root, AMAT, nnUNet_results=str(results), AMAT_EPOCHS="1", AMAT_ITERS="1", AMAT_VAL_ITERS="1",
           AMAT_STEPS="2", AMAT_XI="100", AMAT_BOUNDARY="stop")
    return results


def _continue(root: Path, results: Path, ok: bool, **settings: str) -> subprocess.CompletedProcess:
    return _train(root, AMAT, "--c", ok=ok, nnUNet_results=str(results), AMAT_EPOCHS="2", AMAT_ITERS="1",
                  AMAT_VAL_ITERS="1", AMAT_STEPS="2", AMAT_XI="100", **settings)


def test_continue_with_another_delta_says_what_to_do(root, stop_run):
    fold = stop_run / _fold(root, AMAT).relative_to(root / "res")
    p = _continue(root, stop_run, ok=False, AMAT_BOUNDARY="stop", AMAT_STEP="2")
    assert p.returncode != 0
    reason = stderr_reason(p)
    assert f"cannot continue from {fold / 'checkpoint_final.pth'}" in reason
    assert "step 1 != 2" in reason
    for fix in ("rerun with AMAT_STEP=1 (what the saved margins were trained with)",
                "set AMAT_FORCE_RESUME=1 to continue the saved margins under this run's settings (AMAT_STEP=2)",
                "without --c in a fresh output folder (set nnUNet_results to another folder"):
        assert fix in reason, (fix, reason)
    assert "force=True" not in reason
    assert reason in _log(fold)


def test_stop_checkpoint_under_the_default_semantics_is_refused_then_forced(root, stop_run):
    fold = stop_run / _fold(root, AMAT).relative_to(root / "res")
    saved = _amat_state(fold / "checkpoint_final.pth")
    assert saved["config"]["boundary"] == "stop"
    p = _continue(root, stop_run, ok=False)  # AMAT_BOUNDARY unset: Algorithm 1
    reason = stderr_reason(p)
    assert "AMAT_BOUNDARY=stop" in reason and "AMAT_BOUNDARY=none" in reason
    assert "rerun with AMAT_BOUNDARY=stop" in reason and "AMAT_FORCE_RESUME=1" in reason
    assert reason in _log(fold)
    _continue(root, stop_run, ok=True, AMAT_FORCE_RESUME="1")
    log = _log(fold, "AMAT_FORCE_RESUME=1: the saved margins are continued")
    assert f"table sha256 {table_digest(saved['policy']['margins'])}" in log
    after = _amat_state(fold / "checkpoint_final.pth")
    assert after["config"]["boundary"] == "none"
    old, new = _margins(saved), _margins(after)
    assert set(old) <= set(new)
    # xi 100: every visit is accepted and grows its margin by Delta, under both semantics
    visits = after["policy"]["margins"]["updates"]
    assert sum(v - 1.0 for v in new.values()) == pytest.approx(visits) and visits == 2 * _batch_size(root)
