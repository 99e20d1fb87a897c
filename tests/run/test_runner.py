"""`amat run` (the monkeypatch runner) on small generic (x, y) scripts, through the real
console script in subprocesses, plus the sample-id plumbing on real DataLoaders."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from amat_hooks.config import AdvConfig
from amat_hooks.run import (
    IndexCollate, IndexedBatch, IndexedDataset, Patches, Runner, parse_command, RunnerError)

from support import amat_cmd, run  # noqa: E402

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
p.add_argument("--init", default=None)
p.add_argument("--tqdm", action="store_true")
a = p.parse_args()
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.randn(a.n, 8, generator=g)
y = (x[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
if a.init:
    model.load_state_dict(torch.load(a.init))
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
    if a.tqdm:
        from tqdm import tqdm
    for batch in (tqdm(loader, desc="train", mininterval=0) if a.tqdm else loader):
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
    margins = st["policy"]["margins"]
    assert sorted(margins["ids"]) == list(range(12))  # dataset indices, under shuffle + 2 workers
    assert any(abs(v - 0.3) > 1e-9 for v in margins["values"])  # margins moved from E = Delta
    assert st["epochs"] == 2 and st["host_state"]["stats"]["rows_fed"] == 48 and len(st["xi"]) == 1
    assert st["host_state"]["stats"]["mean_noise_norm"] > 0


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
    assert sb["policy"]["margins"] == sa["policy"]["margins"]
    assert sb["policy"]["online_xi"] == sa["policy"]["online_xi"]
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.7", "--adv-resume", str(a / "amat_state.json"),
                          "--", "python", str(tiny)], tmp_path)
    assert r.returncode == 2 and "step 0.3 != 0.7" in r.stderr
    assert "--adv-force-resume" in r.stderr and "force=True" not in r.stderr  # a flag that exists
    assert len(r.stderr.strip().splitlines()) == 1
    c = tmp_path / "c"
    c.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.7", "--adv-force-resume", "--adv-resume",
                          str(a / "amat_state.json"), "--adv-out", str(c), "--", "python", str(tiny), "--epochs", "0",
                          "--out", str(c)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _state(c / "amat_state.json")["policy"]["margins"]["values"] == \
        sa["policy"]["margins"]["values"]


def test_epoch_lines_count_each_epoch_and_go_on_after_a_resume(tiny, tmp_path):
    """Per-epoch batches and rows (not run totals), correct for --adv none, epoch numbers
    continue after --adv-resume, lines printed above a tqdm bar."""
    a, b, n = tmp_path / "a", tmp_path / "b", tmp_path / "n"
    for d in (a, b, n):
        d.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "1", "--", "python", str(tiny),
                          "--out", str(a)], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[amat] epoch")]
    assert [ln.split(", mean noise")[0] for ln in lines] == [
        "[amat] epoch 0: SAT0.5, batches 3, rows fed 24", "[amat] epoch 1: SAT0.5, batches 3, rows fed 24"]
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "1", "--adv-resume",
                          str(a / "amat_state.json"), "--", "python", str(tiny), "--epochs", "1", "--tqdm",
                          "--out", str(b)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\[amat\] epoch 2: SAT0.5, batches 3, rows fed 24, ", r.stdout, re.M), r.stdout
    assert _state(b / "amat_state.json")["host_state"]["stats"]["batches"] == 9  # 6 before the resume + 3
    r = run(amat_cmd() + ["run", "--adv", "none", "--", "python", str(tiny), "--out", str(n)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[amat] epoch 1: STD, batches 3, rows fed 12" in r.stdout
    st = _state(n / "amat_state.json")
    assert st["host_state"]["stats"]["rows_fed"] == 24 and st["host_state"]["input_shape"] == [8] and len(st["history"]) == 2


def test_resume_checks_the_models_weights_against_the_checkpoint(tiny, tmp_path):
    """--adv-resume restores margins, not weights: a script that does not load the
    checkpoint next to the sidecar gets a one-line warning; one that does, a confirmation."""
    a = tmp_path / "a"
    a.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "1", "--", "python", str(tiny),
                          "--out", str(a)], tmp_path)
    assert r.returncode == 0, r.stderr
    side = a / "ckpt_1.pt.amat.json"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "1", "--adv-resume", str(side),
                          "--", "python", str(tiny), "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "weights at the first training step differ from" in warn[0]
    assert str(a / "ckpt_1.pt") in warn[0] and "12 margins" in warn[0]
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "1", "--adv-resume", str(side),
                          "--", "python", str(tiny), "--epochs", "1", "--init", str(a / "ckpt_1.pt"),
                          "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and f"weights at the first step equal {a / 'ckpt_1.pt'}" in r.stdout


def test_default_semantics_is_algorithm_1_and_a_bogus_boundary_is_an_error(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-steps", "1", "--", "python", str(tiny),
                          "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    side = _state(tmp_path / "ckpt_0.pt.amat.json")
    assert side["policy"]["config"]["boundary"] == "none" and side["label"] == "AMAT"
    assert side["config"]["boundary"] == "none" and side["host_state"]["batch"] == "split"
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--adv-boundary", "bogus", "--",
                          "python", str(tiny)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown --adv-boundary 'bogus'" in r.stderr and "none" in r.stderr and "stop" in r.stderr


# -- refusals and failures -----------------------------------------------------------------------
def test_refuses_a_script_without_dataloader(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", str(tiny),
                          "--mode", "nodl"], tmp_path)
    assert r.returncode == 3
    assert "no batch came from a torch.utils.data.DataLoader" in r.stderr and "Refusing to train" in r.stderr
    assert "trained without a DataLoader" not in r.stdout
    assert not (tmp_path / "amat_state.json").exists()  # a refused run leaves no state


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
    refused = tmp_path / "refused"
    refused.mkdir()
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "0.3", "--", "python", str(tiny),
                          "--mode", "iterable", "--epochs", "1", "--out", str(refused)], refused)
    assert r.returncode == 3 and "IterableDataset, which has no sample indices" in r.stderr
    assert list(refused.iterdir()) == [], list(refused.iterdir())  # no state, no checkpoint


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

    from amat_hooks.run import CriterionAdapter

    runner = Runner(AdvConfig(mode="sat", eps=1.0), verbose=False)
    runner.loss_modules.append(nn.CrossEntropyLoss())
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, 1)
    x, y = torch.randn(2, 1, 4, 4), torch.randint(0, 3, (2, 4, 4))
    adapter = runner.pm.hook.amat_adapter(batch=(x, y), host=runner)
    assert isinstance(adapter, CriterionAdapter) and adapter.term_floors == (0.0,)
    t = adapter.bind_loss((x, y), model).terms(x)
    assert t.shape == (2, 1)
    assert t[:, 0].tolist() == pytest.approx([F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).item() for i in range(2)])
    assert t.mean().item() == pytest.approx(nn.CrossEntropyLoss()(model(x), y).item())
    # the same terms from an output the script's forward produced: no forward of its own
    assert torch.allclose(adapter.output_terms((x, y), model(x)), t)
    assert runner.criterion.reduction == "mean"
    out = adapter.with_inputs((x, y), torch.cat([x, x + 1]))
    assert torch.equal(out[1], torch.cat([y, y]))
    # what the generic adapter cannot handle is refused in one line naming what to implement
    from amat_hooks.adapter import AdapterError

    with pytest.raises(AdapterError, match="attack needs float inputs"):
        adapter.inputs((torch.zeros(2, 3, 4, 4, dtype=torch.uint8), y))
    with pytest.raises(RunnerError, match="model returns a list.*add an adapter"):
        adapter.output_terms((x, y), [model(x)])


class CountingNet(torch.nn.Module):
    """Conv + BatchNorm + linear head that counts its forward calls (rows per call)."""

    def __init__(self) -> None:
        super().__init__()
        from torch import nn

        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 6 * 6, 2))
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(int(x.shape[0]))
        return self.body(x)


def _bn_state(model):
    bn = model.body[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def _runner_with(model, mode="sat", batch_mode="split", **kw):
    from torch import nn

    cfg = AdvConfig(mode=mode, eps=0.5 if mode == "sat" else None, delta=0.5 if mode == "amat" else None,
                    pgd_steps=3, **kw)
    runner = Runner(cfg, verbose=False, batch_mode=batch_mode)
    runner.model = model.train()
    runner.loss_modules.append(nn.CrossEntropyLoss())
    return runner


@pytest.mark.parametrize("batch_mode", ["split", "joint"])
def test_batchnorm_statistics_after_one_step_equal_two_separate_forwards(batch_mode):
    """Default (split): the script's forward of the handed 2B rows runs as a forward of the B
    clean rows and one of the B noisy rows, so BatchNorm's running statistics and the
    outputs equal those of two separate forwards; the attack moves no statistics. With
    --adv-batch joint they equal ONE forward of all 2B rows (what that option changes)."""
    import copy

    torch.manual_seed(0)
    model = CountingNet()
    reference = copy.deepcopy(model)
    runner = _runner_with(model, batch_mode=batch_mode)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    before = _bn_state(model)
    with Patches(runner):
        xb, yb = runner.process((x, y), [0, 1, 2, 3])
        assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(model)))  # PGD left them alone
        assert xb.shape == (8, 1, 6, 6) and torch.equal(xb[:4], x) and not torch.equal(xb[4:], x)
        assert torch.equal(yb, torch.cat([y, y]))
        model.calls.clear()
        out = model(xb)  # the script's own forward of the 2B rows
    if batch_mode == "split":
        assert model.calls == [4, 4]
        expect = torch.cat([reference(xb[:4]), reference(xb[4:])])
    else:
        assert model.calls == [8]
        expect = reference(xb)
    assert torch.allclose(out, expect, atol=1e-6)
    for got, want in zip(_bn_state(model), _bn_state(reference)):
        assert torch.allclose(got, want, atol=1e-7)
    assert int(model.body[1].num_batches_tracked) == (2 if batch_mode == "split" else 1)


def test_margin_test_uses_the_noisy_training_forward_with_no_extra_forward():
    """Algorithm 1 line 9 on the per-sample terms of the noisy rows the script trained on:
    the expected acceptance is computed here from the script's own output (CE per sample <
    xi), the expected margins by lines 10/12 with the noise norms measured on the handed
    batch; between the script's forward and its optimizer step the model runs no forward."""
    import torch.nn.functional as F

    torch.manual_seed(1)
    model = CountingNet()
    runner = _runner_with(model, mode="amat", xi=[1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step changes nothing
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    with Patches(runner):
        runner._optimizers.add(opt)
        xb, yb = runner.process((x, y), [10, 11, 12, 13])
        model.calls.clear()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        noisy_ce = F.cross_entropy(out[4:].detach(), y, reduction="none")
        xi = float(noisy_ce.median())  # some samples pass, some do not
        runner.engine.policy.xi_fixed = torch.tensor([xi])
        opt.zero_grad()
        loss.backward()
        opt.step()  # the margin test runs in the step pre-hook
        assert model.calls == [4, 4]  # the script's two forwards; no extra one for the margins
    noise = (xb[4:] - x).flatten(1).norm(dim=1)
    e0 = 0.5
    expect = [e0 + 0.5 if ce < xi else (float(n) + e0) / 2 for ce, n in zip(noisy_ce.tolist(), noise)]
    assert 0 < sum(ce < xi for ce in noisy_ce.tolist()) < 4
    got = runner.engine.policy.margins.get([10, 11, 12, 13]).tolist()
    assert got == pytest.approx(expect, rel=1e-5)


def test_online_xi_comes_from_the_clean_training_forward():
    """Online xi (no --adv-xi): the clean per-sample terms are those of the script's clean
    forward (the first B output rows), not of an extra forward."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    model = CountingNet()
    runner = _runner_with(model, mode="amat", xi_rule="mean")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([1, 1, 0, 0])
    with Patches(runner):
        runner._optimizers.add(opt)
        xb, yb = runner.process((x, y), [0, 1, 2, 3])
        model.calls.clear()
        out = model(xb)
        clean_ce = F.cross_entropy(out[:4].detach(), y, reduction="none")
        F.cross_entropy(out, yb).backward()
        opt.step()
        assert model.calls == [4, 4]
    assert runner.engine.policy.xi().tolist() == pytest.approx([float(clean_ce.mean())], rel=1e-5)


def test_a_forward_the_runner_cannot_match_costs_an_extra_forward_and_says_so(capsys):
    """A copy of the handed rows still matches (same shape); a script that forwards the
    clean and noisy halves itself does not: then the margin test runs one forward on the
    noisy rows, and a warning says so once."""
    import torch.nn.functional as F

    torch.manual_seed(3)
    model = CountingNet()
    runner = _runner_with(model, mode="amat", xi=[100.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    with Patches(runner):
        runner._optimizers.add(opt)
        xb, yb = runner.process((x, y), [0, 1, 2, 3])
        model.calls.clear()
        F.cross_entropy(model(xb * 1.0), yb).backward()  # a new tensor of the handed shape: split
        opt.step()
        assert model.calls == [4, 4]
        assert "was not called with" not in capsys.readouterr().err
        xb, yb = runner.process((x, y), [4, 5, 6, 7])
        model.calls.clear()
        out = torch.cat([model(xb[:4]), model(xb[4:])])
        F.cross_entropy(out, yb).backward()
        opt.step()
        assert model.calls == [4, 4, 4]  # the script's own two forwards, then the margin test's one
    assert "was not called with the rows the runner handed" in capsys.readouterr().err
    assert runner.engine.policy.margins.get([0, 4]).tolist() == pytest.approx([1.0, 1.0])  # accepted: E + Delta


def test_epoch_lines_go_through_tqdm_write_while_a_bar_is_active(capsys):
    from tqdm import tqdm

    runner = Runner(AdvConfig(mode="none"))
    bar = tqdm(total=10, desc="train", file=sys.stderr, mininterval=0, ascii=True)
    bar.update(3)
    capsys.readouterr()
    runner.amat_log("epoch 0: STD, batches 3, rows fed 12")
    out = capsys.readouterr()
    bar.close()
    assert out.out == "[amat] epoch 0: STD, batches 3, rows fed 12\n"
    assert "train" in out.err and "3/10" in out.err  # the bar was cleared and drawn again below the line
    capsys.readouterr()
    runner.amat_log("no bar")
    out = capsys.readouterr()
    assert out.out == "[amat] no bar\n" and out.err == ""


def test_runner_is_a_host_and_records_the_epoch_history():
    from amat_hooks.hookspecs import Host

    runner = Runner(AdvConfig(mode="amat", delta=0.5), verbose=False)
    assert isinstance(runner, Host)
    runner.end_of_pass()
    assert runner.amat_history[0]["epoch"] == 0 and runner.amat_history[0]["margin_mean"] != runner.amat_history
    assert runner.state()["history"] == runner.amat_history


def test_python_dash_m_form(tiny, tmp_path):
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "0.5", "--adv-steps", "1", "--", "python", "-m",
                          "tiny_train", "--epochs", "1", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch 0 rows 24" in r.stdout


CLASSIC_STYLE = r'''
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Images(Dataset):  # classic-YOLOv5-like samples: uint8 image, [n, 6] boxes, path, shape
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8), torch.rand(2, 6), f"im{i}.jpg", (8, 8)


def collate(items):
    imgs, t, p, s = zip(*items)
    return torch.stack(imgs), torch.cat(t), p, s


model = nn.Conv2d(3, 2, 1)
crit = nn.MSELoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for imgs, targets, paths, shapes in DataLoader(Images(), batch_size=2, collate_fn=collate):
    out = model(imgs.float() / 255)
    loss = crit(out.mean(), targets.mean())
    opt.zero_grad(); loss.backward(); opt.step()
'''


def test_a_classic_style_batch_without_its_adapter_is_refused_in_one_line(tmp_path):
    """uint8 images and [N, 6] targets with no YOLOv5 checkout: the generic adapter refuses up
    front, naming what to implement, and nothing trains or is written."""
    script = tmp_path / "classic_style.py"
    script.write_text(CLASSIC_STYLE)
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "1", "--", "python", str(script)], tmp_path)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "attack needs float inputs" in r.stderr and "adapter" in r.stderr
    assert not (tmp_path / "amat_state.json").exists()
