"""The hook system, the adapter object of the plain loop, third-party entry points, CLI, offline."""
import subprocess
import sys
import textwrap
import urllib.request

import pytest
import torch
from torch import nn

import amat_hooks
from amat_hooks import (AdapterError, AdvConfig, AdversarialEngine, AdversarialLoop, BatchAdapter, TupleAdapter, hookimpl, new_plugin_manager, per_sample_mean)
from amat_hooks.attacks import preserved_state
from amat_hooks.offline import NetworkAccessError, no_network


def test_hookimpl_and_manager_exported_at_top():
    pm = amat_hooks.get_plugin_manager()
    assert pm is amat_hooks.get_plugin_manager()
    names = [n for n, _ in pm.list_name_plugin()]
    assert "amat_hooks.loop" in names and "amat_hooks.run.plugin" in names
    specs = {h for h in dir(pm.hook) if h.startswith("amat_")}
    assert specs == {"amat_adapter", "amat_epoch_end", "amat_add_commands", "amat_tasks", "amat_demo_backends"}
    assert pm.hook.amat_adapter.spec.opts["firstresult"] is True
    assert not any(pm.hook.amat_epoch_end.spec.opts.get(k) for k in ("firstresult",))


def make_loop(mode, log=None, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    loss = per_sample_mean(nn.CrossEntropyLoss(reduction="none"))
    return model, AdversarialLoop(model, loss, AdvConfig(mode=mode, **kw), log=log)


def test_loop_amat_trains_and_moves_margins_keyed_by_ids():
    lines = []
    model, adv = make_loop("amat", log=lines.append, delta=0.3, pgd_steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    ids = torch.arange(100, 108)
    for _ in range(3):
        loss = adv.loss((x, y, ids))
        opt.zero_grad(); loss.backward(); opt.step()
    summ = adv.epoch_end(0)
    assert adv.policy.margins.ids() == list(range(100, 108))
    assert summ["margin_count"] == 8 and summ["margin_mean"] != pytest.approx(0.3)
    out = adv.last
    assert out.loss.item() == pytest.approx(((out.clean_loss + out.noisy_loss) / 2).item())
    # BN saw exactly the training forwards: 2 per step (clean + noisy), none from the attack
    assert model[1].num_batches_tracked.item() == 6
    # every batch went through one adapter object, asked for once and named once in the log
    assert isinstance(adv.engine.adapter, TupleAdapter)
    assert [m for m in lines if m.startswith("adapter:")] == ["adapter: generic (x, y[, ids])"]


def test_loop_dict_batches_and_std_ignore_ids():
    model, adv = make_loop("none")
    loss = adv.loss({"image": torch.randn(4, 6), "label": torch.randint(0, 3, (4,))})
    assert loss.dim() == 0 and adv.last.attack is None


def test_amat_without_ids_says_how_to_fix():
    model, adv = make_loop("amat", delta=0.3)
    with pytest.raises(AdapterError, match=r"yield \(x, y, ids\)"):
        adv.loss((torch.randn(4, 6), torch.randint(0, 3, (4,))))


def test_unknown_batch_says_what_to_yield():
    model, adv = make_loop("sat", eps=0.5)
    with pytest.raises(AdapterError, match=r"no amat_hooks adapter recognises this batch \(Tensor\(4, 6\)\).*adapter="):
        adv.loss(torch.randn(4, 6))


def test_with_inputs_stretches_targets_for_clean_plus_noisy():
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    out = TupleAdapter(lambda o, t: o.sum(1)).with_inputs((x, y, [7, 8, 9]), torch.cat([x, x]))
    assert out[1].tolist() == [0, 1, 2, 0, 1, 2] and out[2] == [7, 8, 9, 7, 8, 9]
    with pytest.raises(AdapterError, match=r"\[N, 6\] boxes"):  # targets that are not one row per sample
        TupleAdapter(lambda o, t: o.sum(1)).with_inputs((x, torch.zeros(5, 6)), torch.cat([x, x]))


class PixelsAdapter(BatchAdapter):
    """A third party's batch object: ``.pixels`` in, ``.names`` as ids, loss = squared output."""

    name = "pixels"

    def inputs(self, batch):
        return batch.pixels

    def ids(self, batch):
        return batch.names

    def with_inputs(self, batch, x):
        return Batch(x, batch.names * (x.shape[0] // len(batch.names)))

    def output_terms(self, batch, output):
        return output.pow(2).sum(1)


class Batch:
    def __init__(self, pixels=None, names=("u", "v")):
        self.pixels = torch.randn(2, 3) if pixels is None else pixels
        self.names = list(names)


def test_a_plugin_answers_amat_adapter_for_its_own_batches():
    class PixelsPlugin:
        asked = 0

        @hookimpl
        def amat_adapter(self, batch, host):
            if isinstance(batch, Batch):
                PixelsPlugin.asked += 1
                return PixelsAdapter()
            return None

    pm = new_plugin_manager(load_entry_points=False)
    pm.register(PixelsPlugin())
    model = nn.Linear(3, 2)
    lines = []
    adv = AdversarialLoop(model, lambda o, t: o.sum(1), AdvConfig(mode="amat", delta=0.1, xi=[100.0]), pm=pm,
                          log=lines.append)
    for _ in range(3):
        adv.loss(Batch())
    assert PixelsPlugin.asked == 1 and isinstance(adv.engine.adapter, PixelsAdapter)
    assert adv.policy.margins.get(["u", "v"]).tolist() == pytest.approx([0.4, 0.4])  # 0.1 + 3 x Delta
    assert [m for m in lines if m.startswith("adapter:")] == ["adapter: pixels"]
    engine = AdversarialEngine(AdvConfig(mode="amat", delta=0.1, xi=[100.0]).build_policy(), PixelsAdapter())
    engine.step(model, Batch())
    assert engine.policy.margins.get(["u", "v"]).tolist() == pytest.approx([0.2, 0.2])


ADAPTER_PKG = {
    "pyproject.toml": textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "amat-test-adapter"
        version = "0.0.1"
        [project.entry-points.amat_hooks]
        pixels = "amat_test_adapter"
    """),
    "amat_test_adapter/__init__.py": textwrap.dedent("""
        from amat_hooks import BatchAdapter, hookimpl
        class PixelsAdapter(BatchAdapter):
            name = "pixels (third party)"
            def inputs(self, batch):
                return batch["pixels"]
            def ids(self, batch):
                return batch["names"]
        @hookimpl
        def amat_adapter(batch, host):
            return PixelsAdapter() if isinstance(batch, dict) and "pixels" in batch else None
    """),
}


@pytest.mark.slow
def test_third_party_adapter_through_a_real_entry_point(pip_install):
    pip_install("amat-test-adapter", ADAPTER_PKG)
    code = ("import torch, amat_hooks; pm = amat_hooks.get_plugin_manager(); b = {'pixels': torch.zeros(2), "
            "'names': ['p', 'q']}; a = pm.hook.amat_adapter(batch=b, host=None); print(a.describe(), a.ids(b));"
            "print(sorted(n for n, _ in pm.list_name_plugin()))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "pixels (third party) ['p', 'q']" in out and "pixels" in out


def test_cli_help_lists_commands_and_demo_has_help():
    from amat_hooks.cli import build_parser, main

    text = build_parser().format_help()
    for cmd in ("demo", "calibrate", "eval", "grid"):
        assert cmd in text
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0


def test_no_network_refuses_connections_without_sending():
    with no_network() as blocked:
        with pytest.raises((NetworkAccessError, OSError)):
            urllib.request.urlopen("http://example.com", timeout=1)
    assert blocked and "example.com" in blocked[0]


def test_preserved_state_restores_only_the_model_it_is_given():
    bn = torch.nn.BatchNorm1d(2)
    with preserved_state(None):  # no model: nothing is saved, so nothing is restored
        bn(torch.randn(8, 2) + 5)
    assert bn.num_batches_tracked.item() == 1 and float(bn.running_mean.mean()) > 0.1
    mean = bn.running_mean.clone()
    bn.eval()
    with preserved_state(bn):
        bn.train()
        bn(torch.randn(8, 2) - 5)
    assert bn.num_batches_tracked.item() == 1 and torch.equal(bn.running_mean, mean) and not bn.training


def test_plain_loop_example_runs_amat_and_reports(repo_root):
    p = subprocess.run([sys.executable, str(repo_root / "examples" / "plain_loop.py"), "--epochs", "1",
                        "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "margin_mean" in p.stdout and "clean ADI" in p.stdout and "PGD ADI eps 1:" in p.stdout and "eps 2:" in p.stdout
    bad = subprocess.run([sys.executable, str(repo_root / "examples" / "plain_loop.py"), "--adv", "sat",
                          "--adv-eps", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--adv-eps must be > 0" in bad.stderr
