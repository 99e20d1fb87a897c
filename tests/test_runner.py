"""`amat run` (the monkeypatch runner) on small generic (x, y) scripts, through the real
console script in subprocesses, plus the sample-id plumbing on real DataLoaders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from amat_hooks.config import AdvConfig
from amat_hooks.integrations.runner import (
    IndexCollate, IndexedBatch, IndexedDataset, Patches, Runner, parse_command, RunnerError)

REPO = Path(__file__).resolve().parents[1]

TINY = r'''
import argparse, os, sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--workers", type=int, default=0)
p.add_argument("--n", type=int, default=12)
p.add_argument("--out", default=".")
p.add_argument("--mode", default="ok")
a = p.parse_args()
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.randn(a.n, 8, generator=g)
y = (x[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
crit = nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if a.mode == "nodl":  # hand-made batches, no DataLoader
    for i in range(0, a.n, 4):
        loss = crit(model(x[i:i + 4]), y[i:i + 4]); opt.zero_grad(); loss.backward(); opt.step()
    print("trained without a DataLoader"); sys.exit(0)
ds = TensorDataset(x) if a.mode == "xonly" else TensorDataset(x, y)
if a.mode == "iterable":
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))
    ds = Stream()
loader = DataLoader(ds, batch_size=4, shuffle=a.mode != "iterable", num_workers=a.workers)
for epoch in range(a.epochs):
    model.train()
    rows = 0
    for batch in loader:
        if a.mode == "xonly":
            loss = model(batch[0]).pow(2).mean()
            rows += batch[0].shape[0]
        else:
            xb, yb = batch
            loss = crit(model(xb), yb)
            rows += xb.shape[0]
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"epoch {epoch} rows {rows}", flush=True)
    torch.save(model.state_dict(), os.path.join(a.out, f"ckpt_{epoch}.pt"))
    if a.mode == "crash":
        raise ValueError("boom from the script")
    if a.mode == "exit7":
        sys.exit(7)
'''


def amat_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "amat_hooks.cli"]


def run(args, cwd, guard: Path | None = None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if guard is not None:
        env["AMAT_NETWORK_GUARD"] = str(guard)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny_train.py"
    p.write_text(TINY)
    return p


def _state(path: Path) -> dict:
    return json.loads(path.read_text())


# -- sample ids ----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,in_order,persistent", [(0, True, False), (2, True, False), (2, False, True)])
def test_indices_travel_with_the_samples_under_shuffle_and_workers(workers, in_order, persistent):
    ds = TensorDataset(torch.arange(23).float().unsqueeze(1) * 10)
    loader = DataLoader(IndexedDataset(ds), batch_size=4, shuffle=True, num_workers=workers,
                        collate_fn=IndexCollate(default_collate), in_order=in_order,
                        persistent_workers=persistent)
    for _ in range(2):  # two epochs (persistent workers are reused)
        seen = []
        for b in loader:
            assert isinstance(b, IndexedBatch)
            assert (b.data[0].squeeze(1) / 10).long().tolist() == b.ids
            seen += b.ids
        assert sorted(seen) == list(range(23))


def test_patched_dataloader_yields_the_scripts_own_batches_outside_training():
    """No model/optimizer: batches pass through with the ids stripped, same order as unpatched."""
    ds = TensorDataset(torch.arange(10).float())
    torch.manual_seed(5)
    plain = [b[0].tolist() for b in DataLoader(ds, batch_size=3, shuffle=True)]
    runner = Runner(AdvConfig(mode="amat", delta=0.5), verbose=False)
    with Patches(runner):
        torch.manual_seed(5)
        loader = DataLoader(ds, batch_size=3, shuffle=True)
        patched = [b[0].tolist() for b in loader]
        assert len(loader.dataset) == 10 and loader.dataset.tensors[0].shape == (10,)  # forwarded
    assert patched == plain
    assert DataLoader.__init__.__name__ == "__init__" and DataLoader.__iter__.__name__ == "__iter__"


def test_parse_command_forms():
    assert parse_command(["--", "python", "t.py", "--x", "1"]) == ("path", "t.py", ["--x", "1"])
    assert parse_command(["python3", "-m", "pkg.train", "a"]) == ("module", "pkg.train", ["a"])
    assert parse_command(["t.py"]) == ("path", "t.py", [])
    with pytest.raises(RunnerError, match="no script"):
        parse_command(["--"])
    with pytest.raises(RunnerError, match="not supported"):
        parse_command(["python", "-c", "print(1)"])


# -- end to end through the console script ---------------------------------------------------------
def test_amat_run_generic_loop_moves_margins_and_feeds_noisy_rows(tiny, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    guard = tmp_path / "network_attempts.txt"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "3", "--",
                          "python", str(tiny), "--workers", "2", "--out", str(out)], tmp_path, guard)
    assert r.returncode == 0, r.stderr
    assert "epoch 0 rows 24" in r.stdout and "epoch 1 rows 24" in r.stdout  # 12 clean + 12 noisy
    assert "[amat] epoch 1:" in r.stdout and "margins n=12" in r.stdout
    assert not guard.exists(), guard.read_text()
    for e in (0, 1):
        assert (out / f"ckpt_{e}.pt.amat.json").is_file()
    st = _state(out / "amat_state.json")
    margins = st["engine"]["policy"]["margins"]
    assert sorted(margins["ids"]) == list(range(12))  # dataset indices, under shuffle + 2 workers
    assert any(abs(v - 0.3) > 1e-9 for v in margins["values"])  # margins moved from E = Delta
    assert st["epochs"] == 2 and st["stats"]["rows_fed"] == 48 and len(st["xi"]) == 1
    assert st["stats"]["mean_noise_norm"] > 0


def test_amat_run_none_equals_the_direct_run_and_amat_does_not(tiny, tmp_path):
    dirs = {k: tmp_path / k for k in ("direct", "none", "sat")}
    for d in dirs.values():
        d.mkdir()
    r = run([sys.executable, str(tiny), "--out", str(dirs["direct"])], tmp_path)
    assert r.returncode == 0 and "epoch 1 rows 12" in r.stdout, r.stderr
    r = run(amat_cmd() + ["run", "--adv", "none", "--", "python", str(tiny), "--out", str(dirs["none"])], tmp_path)
    assert r.returncode == 0 and "epoch 1 rows 12" in r.stdout, r.stderr
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "2", "--",
                          "python", str(tiny), "--out", str(dirs["sat"])], tmp_path)
    assert r.returncode == 0 and "epoch 1 rows 24" in r.stdout, r.stderr
    direct = torch.load(dirs["direct"] / "ckpt_1.pt")
    none = torch.load(dirs["none"] / "ckpt_1.pt")
    sat = torch.load(dirs["sat"] / "ckpt_1.pt")
    assert all(torch.equal(direct[k], none[k]) for k in direct)
    assert not all(torch.allclose(direct[k], sat[k]) for k in direct)
    assert _state(dirs["sat"] / "amat_state.json")["label"] == "SAT0.5"


def test_resume_restores_margins_exactly(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "2", "--",
                          "python", str(tiny), "--out", str(a)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-resume", str(a / "amat_state.json"),
                          "--adv-out", str(b), "--", "python", str(tiny), "--epochs", "0", "--out", str(b)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "12 margins" in r.stdout
    sa, sb = _state(a / "amat_state.json"), _state(b / "amat_state.json")
    assert sb["engine"]["policy"]["margins"] == sa["engine"]["policy"]["margins"]
    assert sb["engine"]["policy"]["online_xi"] == sa["engine"]["policy"]["online_xi"]
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.7", "--adv-resume", str(a / "amat_state.json"),
                          "--", "python", str(tiny)], tmp_path)
    assert r.returncode == 2 and "step 0.3 != 0.7" in r.stderr


# -- refusals and failures -----------------------------------------------------------------------
def test_refuses_a_script_without_dataloader(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", str(tiny),
                          "--mode", "nodl"], tmp_path)
    assert r.returncode == 3
    assert "no batch came from a torch.utils.data.DataLoader" in r.stderr and "Refusing to train" in r.stderr
    assert "trained without a DataLoader" not in r.stdout


def test_refuses_an_unknown_batch_structure(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "1", "--", "python", str(tiny),
                          "--mode", "xonly"], tmp_path)
    assert r.returncode == 3, r.stderr
    assert "structure no adapter knows" in r.stderr and "entry-point group" in r.stderr
    assert "epoch 0" not in r.stdout


def test_iterable_dataset_works_for_sat_and_is_refused_for_amat(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "2", "--", "python", str(tiny),
                          "--mode", "iterable", "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch 0 rows 24" in r.stdout
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", str(tiny),
                          "--mode", "iterable", "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 3 and "IterableDataset, which has no sample indices" in r.stderr


def test_missing_crashing_and_exiting_scripts_give_their_exit_code(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", "nope/missing.py"], tmp_path)
    assert r.returncode == 2 and "script not found: nope/missing.py" in r.stderr
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", str(tiny),
                          "--mode", "crash", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: boom from the script" in r.stderr
    assert (tmp_path / "amat_state.json").is_file()  # the state up to the crash is kept
    r = run(amat_cmd() + ["run", "--adv", "none", "--", "python", str(tiny), "--mode", "exit7",
                          "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 7
    r = run(amat_cmd() + ["run", "--adv", "amat", "--", "python", str(tiny)], tmp_path)
    assert r.returncode == 2 and "--adv-step" in r.stderr


def test_generic_adapter_uses_the_scripts_own_loss_module_per_sample():
    """Segmentation-shaped (x, y): per-image terms from the script's CrossEntropyLoss object
    (unreduced copy); their mean is the script's batch loss; the object is left as it was."""
    import torch.nn.functional as F
    from torch import nn

    from amat_hooks.integrations.runner import RunnerBatch

    runner = Runner(AdvConfig(mode="sat", eps=1.0), verbose=False)
    runner.criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, 1)
    x, y = torch.randn(2, 1, 4, 4), torch.randint(0, 3, (2, 4, 4))
    batch = RunnerBatch((x, y), [7, 9])
    bl = runner.engine.bound_loss(batch, model)
    t = bl.terms(x)
    assert t.shape == (2,)
    assert t.tolist() == pytest.approx([F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).item() for i in range(2)])
    assert t.mean().item() == pytest.approx(nn.CrossEntropyLoss()(model(x), y).item())
    assert runner.criterion.reduction == "mean"
    assert runner.engine.sample_ids(batch) == [7, 9]
    out = runner.engine.with_inputs(batch, torch.cat([x, x + 1]))
    assert out.ids == [7, 9, 7, 9] and torch.equal(out.data[1], torch.cat([y, y]))


def test_runner_path_leaves_batchnorm_statistics_to_the_script():
    """The attack (and AMAT's online-xi clean forward) must not move BN running stats: only
    the script's own forward on the 2B rows may."""
    from torch import nn


    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).train()
    runner = Runner(AdvConfig(mode="amat", delta=0.5, pgd_steps=3, xi_rule="mean+2std"), verbose=False)
    runner.model, runner.criterion = model, nn.CrossEntropyLoss()
    bn = model[1]
    before = [b.clone() for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    out = runner.process((x, y), [0, 1, 2, 3])
    after = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert out[0].shape == (8, 1, 6, 6) and torch.equal(out[0][:4], x) and not torch.equal(out[0][4:], x)
    assert torch.equal(out[1], torch.cat([y, y]))


def test_python_dash_m_form(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "1", "--", "python", "-m",
                          "tiny_train", "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch 0 rows 24" in r.stdout
