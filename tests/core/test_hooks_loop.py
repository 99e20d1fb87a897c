"""The hook system, the generic loop adapter, third-party entry points, CLI, offline."""
import subprocess
import sys
import textwrap
import urllib.request

import pytest
import torch
from torch import nn

import amat_hooks
from amat_hooks import AdapterError, AdvConfig, AdversarialEngine, BoundLoss, hookimpl, new_plugin_manager
from amat_hooks.attacks import preserved_state
from amat_hooks.integrations.torch_loop import AdversarialLoop, per_sample_mean
from amat_hooks.offline import NetworkAccessError, no_network


def test_hookimpl_and_manager_exported_at_top():
    pm = amat_hooks.get_plugin_manager()
    assert pm is amat_hooks.get_plugin_manager()
    names = [n for n, _ in pm.list_name_plugin()]
    assert "amat_hooks.integrations.torch_loop" in names
    specs = {h for h in dir(pm.hook) if h.startswith("amat_")}
    assert {"amat_batch_inputs", "amat_batch_sample_ids", "amat_bind_loss", "amat_epoch_end"} <= specs
    assert pm.hook.amat_batch_inputs.spec.opts["firstresult"] is True


def make_loop(mode, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    loss = per_sample_mean(nn.CrossEntropyLoss(reduction="none"))
    return model, AdversarialLoop(model, loss, AdvConfig(mode=mode, **kw))


def test_loop_amat_trains_and_moves_margins_keyed_by_ids():
    model, adv = make_loop("amat", delta=0.3, pgd_steps=3)
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


def test_loop_dict_batches_and_std_ignore_ids():
    model, adv = make_loop("none")
    loss = adv.loss({"image": torch.randn(4, 6), "label": torch.randint(0, 3, (4,))})
    assert loss.dim() == 0 and adv.last.attack is None


def test_amat_without_ids_says_how_to_fix():
    model, adv = make_loop("amat", delta=0.3)
    with pytest.raises(AdapterError, match=r"yield \(x, y, ids\)"):
        adv.loss((torch.randn(4, 6), torch.randint(0, 3, (4,))))


def test_unknown_batch_names_the_hook():
    model, adv = make_loop("sat", eps=0.5)
    with pytest.raises(AdapterError, match="amat_batch_inputs"):
        adv.loss(torch.randn(4, 6))


def test_with_inputs_stretches_targets_for_clean_plus_noisy():
    pm = new_plugin_manager(load_entry_points=False)
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    out = pm.hook.amat_batch_with_inputs(batch=(x, y, [7, 8, 9]), inputs=torch.cat([x, x]), host=None)
    assert out[1].tolist() == [0, 1, 2, 0, 1, 2] and out[2] == [7, 8, 9, 7, 8, 9]


def test_a_plugin_object_can_claim_its_own_batches():
    class PixelsAdapter:
        @hookimpl
        def amat_batch_inputs(self, batch, host):
            return batch.pixels if hasattr(batch, "pixels") else None

        @hookimpl
        def amat_batch_sample_ids(self, batch, host):
            return batch.names if hasattr(batch, "pixels") else None

        @hookimpl
        def amat_bind_loss(self, batch, model, host):
            return BoundLoss(terms=lambda x: model(x).pow(2).sum(1)) if hasattr(batch, "pixels") else None

    class Batch:
        def __init__(self):
            self.pixels, self.names = torch.randn(2, 3), ["u", "v"]

    pm = new_plugin_manager(load_entry_points=False)
    pm.register(PixelsAdapter())
    model = nn.Linear(3, 2)
    engine = AdversarialEngine(AdvConfig(mode="amat", delta=0.1, xi=[100.0]).build_policy(), host=None, pm=pm)
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
        from amat_hooks import hookimpl
        @hookimpl
        def amat_batch_inputs(batch, host):
            return batch["pixels"] if isinstance(batch, dict) and "pixels" in batch else None
        @hookimpl
        def amat_batch_sample_ids(batch, host):
            return batch["names"] if isinstance(batch, dict) and "pixels" in batch else None
    """),
}


@pytest.mark.slow
def test_third_party_adapter_through_a_real_entry_point(pip_install):
    pip_install("amat-test-adapter", ADAPTER_PKG)
    code = ("import torch, amat_hooks; pm = amat_hooks.get_plugin_manager();"
            "print(pm.hook.amat_batch_sample_ids(batch={'pixels': torch.zeros(2), 'names': ['p', 'q']}, host=None));"
            "print(sorted(n for n, _ in pm.list_name_plugin()))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "['p', 'q']" in out and "pixels" in out


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
