"""Issue 31: no fault loses work. A real script under ``amat run`` is killed (SIGKILL while
its checkpoint is being pickled, SIGKILL between the end of a pass and the save, i.e.
during its validation) or interrupted (SIGINT mid-pass); each ends in a consistent resume
or a clear refusal that names the state to resume from. The faults are raised by the
script itself at a chosen point, so they are deterministic."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from support import amat_cmd, run

pytestmark = pytest.mark.slow

SCRIPT = r'''
import argparse, os, signal, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--fault", default="none")
p.add_argument("--at-epoch", type=int, default=1)
p.add_argument("--init", default=None)
a = p.parse_args()
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.randn(12, 8, generator=g); y = (x[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
start = 0
if a.init:
    ck = torch.load(a.init)
    model.load_state_dict(ck["model"]); start = ck["epoch"] + 1
crit = nn.CrossEntropyLoss(); opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)


class KillWhilePickled:  # SIGKILL in the middle of torch.save
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


for epoch in range(start, a.epochs):
    for i, (xb, yb) in enumerate(loader):
        loss = crit(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
        if a.fault == "sigint" and epoch == a.at_epoch and i == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a pass
    if a.fault == "kill-in-validation" and epoch == a.at_epoch:
        os.kill(os.getpid(), signal.SIGKILL)  # after the pass, before its checkpoint
    obj = {"model": model.state_dict(), "epoch": epoch}
    if a.fault == "kill-in-save" and epoch == a.at_epoch:
        obj["boom"] = KillWhilePickled()
    torch.save(obj, "last.pt")
    print(f"epoch {epoch} saved", flush=True)
'''

ADV = ["run", "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2", "--adv-xi", "0.7"]


@pytest.fixture()
def script(tmp_path) -> Path:
    p = tmp_path / "train.py"
    p.write_text(SCRIPT)
    return p


def _amat(work: Path, script: Path, *args: str, resume: Path | None = None):
    adv = ADV + (["--adv-resume", str(resume)] if resume else [])
    return run(amat_cmd() + adv + ["--", sys.executable, str(script), *args], work, timeout=300)


def _state(path: Path) -> dict:
    return json.loads(path.read_text())


def test_kill_while_the_script_saves_keeps_the_old_checkpoint_and_the_next_start_cleans_up(tmp_path, script):
    r = _amat(tmp_path, script, "--fault", "kill-in-save")
    assert r.returncode == -signal.SIGKILL
    ck = torch.load(tmp_path / "last.pt")  # the patched torch.save is atomic: epoch 0's file, whole
    assert ck["epoch"] == 0
    temps = [p.name for p in tmp_path.iterdir() if p.name.startswith(".last.pt.") and p.name.endswith(".tmp")]
    assert len(temps) == 1  # what the killed save was writing
    side = _state(tmp_path / "last.pt.amat.json")
    assert side["epochs"] == 1 and side["checkpoint"].endswith("last.pt")
    # amat_state.json went on to epoch 2's margins (the pass ended) but names epoch 0's weights: refused
    r = _amat(tmp_path, script, "--init", "last.pt", resume=tmp_path / "amat_state.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"resume with {tmp_path / 'last.pt'}.amat.json" in r.stderr, r.stderr
    # the state saved with those weights resumes; the start removes the orphaned temporary file
    r = _amat(tmp_path, script, "--init", "last.pt", resume=tmp_path / "last.pt.amat.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"removed 1 temporary file(s) an interrupted write left in {tmp_path}: {temps[0]}" in r.stdout
    assert f"resume: the model's weights at the first step equal {tmp_path / 'last.pt'}" in r.stdout
    assert not (tmp_path / temps[0]).exists()
    assert torch.load(tmp_path / "last.pt")["epoch"] == 2 and _state(tmp_path / "amat_state.json")["epochs"] == 3


def test_kill_during_validation_then_resume_from_the_state_saved_with_the_weights(tmp_path, script):
    r = _amat(tmp_path, script, "--fault", "kill-in-validation")
    assert r.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "last.pt")["epoch"] == 0
    r = _amat(tmp_path, script, "--init", "last.pt", resume=tmp_path / "amat_state.json")
    assert r.returncode == 2 and "the run stopped before its next save" in r.stderr, r.stderr
    r = _amat(tmp_path, script, "--init", "last.pt", resume=tmp_path / "last.pt.amat.json")
    assert r.returncode == 0, r.stderr[-2000:]
    after = _state(tmp_path / "amat_state.json")
    assert after["epochs"] == 3 and [h["epoch"] for h in after["history"]] == [0, 1, 2]
    assert after["policy"]["margins"]["updates"] == 3 * 12  # every sample once per epoch: nothing twice


def test_ctrl_c_prints_where_the_last_state_is_and_does_not_count_the_partial_pass(tmp_path, script):
    r = _amat(tmp_path, script, "--fault", "sigint")
    assert r.returncode == 130
    assert r.stdout.count("[amat] adapter: generic (x, y) with the script's loss CrossEntropyLoss") == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"amat run: interrupted (Ctrl-C) in epoch 1; the partial pass is not counted; the state of the "
                     f"last finished save is {tmp_path / 'amat_state.json'} (epoch 1, with "
                     f"{tmp_path / 'last.pt'}); continue with --adv-resume {tmp_path / 'amat_state.json'}"], lines
    state = _state(tmp_path / "amat_state.json")
    assert state["epochs"] == 1 and state["policy"]["margins"]["updates"] == 12  # epoch 0 only
    r = _amat(tmp_path, script, "--init", "last.pt", resume=tmp_path / "amat_state.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _state(tmp_path / "amat_state.json")["policy"]["margins"]["updates"] == 3 * 12
