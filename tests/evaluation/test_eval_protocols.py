"""Issue 27 rows 12-14: ``amat eval --protocol authors`` takes the authors' evaluation step
sizes and model mode per kind of task, records them in the result and the fingerprint, and
``paper`` keeps the defaults (and the fingerprints of results written before protocols).

The probe: a model whose loss gradient has one fixed direction, so every attack step moves
the input by exactly its step size along it until the projection stops it. The measured
distance from the clean input is then min(steps x step, eps) by hand."""
import pytest
import torch
from torch import nn

from amat_hooks.evaluation import EvalBatch, EvalTask, robustness_eval
from amat_hooks.evaluation.report import to_markdown
from amat_hooks.evaluation.run import _fingerprint
from amat_hooks.protocols import eval_settings


class _Direction(nn.Module):
    """loss = <w, x>: the L2-normalised gradient is w / |w| everywhere; records its mode."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(1, 2, d), requires_grad=False)
        self.modes: list[bool] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.modes.append(self.training)
        self.inputs.append(x.detach().flatten(1).clone())
        return x.flatten(1) @ self.w


class _Adapter:
    def __init__(self, kind):
        self.protocol_kind = kind


class _DistanceTask(EvalTask):
    """measure = each row's L2 distance from its clean input (held in the target)."""

    name = "probe"
    metric = "distance"
    higher_is_better = False

    def __init__(self, kind: str):
        self.model = _Direction()
        self.adapter = _Adapter(kind)
        self.x = torch.zeros(2, 16)

    def batches(self):
        yield EvalBatch(key="0", x=self.x, target=self.x)

    def loss_terms(self, x, target, repeats):
        return self.model(x)[:, None]

    def measure(self, x, target):
        return (x - target).flatten(1).norm(dim=1).tolist()

    def reduce(self, stats):
        rows = [v for s in stats for v in s]
        return {"distance": sum(rows) / len(rows)}


def _distances(kind, protocol, pgd_steps=4, ifgsm_steps=10, levels=(1.0, 2.0)):
    task = _DistanceTask(kind)
    r = robustness_eval(task, list(levels), attacks=("pgd", "ifgsm"), pgd_steps=pgd_steps, ifgsm_steps=ifgsm_steps,
                        progress=False, protocol=protocol)
    return r, task


@pytest.mark.parametrize("kind,ifgsm_share", [("nnunet", 0.05 * 10), ("landmark", 1.0), ("yolo", 1.0)])
def test_authors_ifgsm_steps_reach_the_radius_by_hand(kind, ifgsm_share):
    """10 IFGSM steps of 0.5 eps reach eps (clipped); nnU-Net's 10 x 0.05 eps reach only eps / 2."""
    r, _ = _distances(kind, "authors")
    for lv in r.levels:
        assert r.noisy["ifgsm"][lv]["distance"] == pytest.approx(ifgsm_share * lv, rel=1e-5)


@pytest.mark.parametrize("protocol,share", [("authors", 0.05), ("paper", None)])
def test_pgd_step_and_start_per_protocol(monkeypatch, protocol, share):
    """The core hands pgd the protocol's step (authors: 0.05 eps; paper: None, i.e. 2.5 eps /
    steps) and start; the authors' start lies on the eps-sphere (measured at the first forward)."""
    import amat_hooks.evaluation.run as run_mod

    seen = []
    real = run_mod.pgd

    def spy(loss_fn, x, eps, **kw):
        seen.append((eps.clone(), kw.get("step_size"), kw.get("random_start")))
        return real(loss_fn, x, eps, **kw)

    monkeypatch.setattr(run_mod, "pgd", spy)
    r, task = _distances("landmark" if protocol == "authors" else "generic", protocol, pgd_steps=4)
    eps, step, start = seen[0]
    if protocol == "authors":
        assert step.tolist() == pytest.approx((share * eps).tolist()) and start == "sphere"
        first = task.model.inputs[0]  # the start: distance exactly eps from the clean (zero) input
        assert first.norm(dim=1).tolist() == pytest.approx(eps.tolist(), rel=1e-5)
    else:
        assert step is None and start == "ball"
    for lv in r.levels:
        assert r.noisy["pgd"][lv]["distance"] <= lv * (1 + 1e-5)


def test_landmark_authors_evaluation_runs_the_model_in_train_mode_and_restores_it():
    task = _DistanceTask("landmark")
    task.model.eval()
    r = robustness_eval(task, [1.0, 2.0], attacks=("pgd", "ifgsm"), pgd_steps=4, progress=False, protocol="authors")
    assert not task.model.training  # the caller's mode comes back
    assert task.model.modes and all(task.model.modes)
    r2, task2 = _distances("nnunet", "authors")
    assert task2.model.modes and not any(task2.model.modes)
    assert r.protocol == {"protocol": "authors", **eval_settings("authors", "landmark")}


def test_protocol_is_in_the_fingerprint_and_the_caption_and_paper_fingerprints_are_unchanged():
    task = _DistanceTask("nnunet")
    args = (task, [1.0], ["pgd"], 4, 10, 0)
    old = _fingerprint(*args)  # the signature results written before protocols used
    assert _fingerprint(*args, protocol="paper") == old
    assert _fingerprint(*args, protocol="authors") != old
    r, _ = _distances("nnunet", "authors")
    text = to_markdown({"AMAT": r})
    assert "Protocol authors: PGD step 0.05 eps, IFGSM step 0.05 eps, model in eval mode, slices holding every " \
           "foreground class." in text
    paper, _ = _distances("nnunet", "paper")
    assert "Protocol" not in to_markdown({"AMAT": paper})
    with pytest.raises(ValueError, match="unknown protocol 'author'"):
        robustness_eval(task, [1.0], attacks=("pgd",), progress=False, protocol="author")
