"""``amat demo`` (default back end ``loop``): STD vs SAT vs AMAT with the plain-PyTorch front
end (:class:`~amat_hooks.loop.AdversarialLoop`) on generated segmentation data, evaluated
with the core's L2 PGD / IFGSM; prints per-epoch progress, the paper-style table and a
verdict on the paper's pattern.

The procedure is the paper's (Algorithm 1, section 2.2):

1. STD is trained on clean data (``clean_epochs``): the clean model.
2. xi = mean of that model's clean per-sample training loss terms (CE, soft-Dice)
   (:func:`~amat_hooks.thresholds.xi_from_losses`, rule "mean" as the paper's segmentation
   experiments).
3. Every method continues from those weights (and that run's Adam state) for the same
   ``epochs`` with its own training: STD clean, SAT one fixed eps, AMAT per-sample margins
   with the fixed xi; no method trains from scratch.
   Each method thus gets the same budget: ``clean_epochs`` clean epochs (shared) plus
   ``epochs`` epochs of its own.
4. Each model is evaluated on generated test images, clean and under ``eval_pgd_steps``-step
   L2 PGD and ``ifgsm_steps``-step IFGSM at ``levels``.

:func:`amat_hooks.demo.verdict.pattern_verdict` then checks the paper's three claims; docs/performance.md ("amat
demo: three seeds") has the default run for seeds 0-2 and why the settings are what they are.
"""
from __future__ import annotations

import copy
import time
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.config import AdvConfig
from amat_hooks.evaluation import EvalResult, robustness_eval
from amat_hooks.evaluation.radius import xi_radii
from amat_hooks.initial_margins import initial_margins_record, write_initial_margins
from amat_hooks.loop import AdversarialLoop
from amat_hooks.evaluation.segmentation import SegmentationEvalTask
from amat_hooks.zoo.segnets import MODELS, SmallUNet, TinySegNet, seg_loss_terms  # noqa: F401
from amat_hooks.zoo.shapes import textured_segmentation
from amat_hooks.thresholds import xi_from_losses

Log = Callable[[str], None]
PENDING = "<written by step 2>"  # AMAT-init's radius file before step 2 has measured it


# -- settings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSettings:
    """Everything the loop demo does; the defaults are the documented demo
    (docs/performance.md, "amat demo: three seeds")."""

    train_images: int = 128
    test_images: int = 48
    size: int = 32
    data: dict = field(default_factory=dict)  # extra keywords for synthetic.textured_segmentation
    model: str = "unet"             # MODELS key
    width: int = 16                 # channels of the first block
    batch: int = 16
    lr: float = 3e-3
    clean_epochs: int = 30          # step 1: STD on clean data (shared; xi is calibrated on it)
    epochs: int = 15                # step 3: each method, from the clean model's weights
    levels: tuple[float, ...] = (2.0, 4.0, 8.0)
    sat_eps: tuple[float, ...] = (2.0, 8.0)
    delta: float = 2.0              # AMAT's Delta (initial margin and growth step)
    train_pgd_steps: int = 5        # PGD iterations of the training noise (SAT and AMAT)
    eval_pgd_steps: int = 20        # evaluation PGD (the paper: 100; see the docs for the cost)
    ifgsm_steps: int = 10
    xi_rule: str = "mean"
    threads: int = 1                # torch CPU threads (1: tiny tensors; robust on shared machines)
    init_margins: bool = True       # also AMAT-init: margins start at each sample's radius (issue 29)
    margin_steps: int = 30          # minimal-norm attack steps of that radius search
    margin_max: float | None = None  # its largest radius (None: twice the largest noise level)

    @property
    def margin_search_max(self) -> float:
        return float(self.margin_max if self.margin_max is not None else 2 * max(self.levels))

    def methods(self, xi: Sequence[float] | None = None, margin_init: str | None = None) -> list[AdvConfig]:
        """STD, each SAT, AMAT and (``init_margins``) AMAT-init. ``margin_init``: the radius file
        step 2 writes; before it exists the AMAT-init entry names it by ``PENDING`` (labels and
        modes only, as the progress plan needs)."""
        cfgs = [AdvConfig(mode="none")]
        cfgs += [AdvConfig(mode="sat", eps=float(e), pgd_steps=self.train_pgd_steps) for e in self.sat_eps]
        amat = AdvConfig(mode="amat", delta=self.delta, pgd_steps=self.train_pgd_steps,
                         xi=None if xi is None else [float(v) for v in xi], xi_rule=self.xi_rule,
                         xi_source="calibration from the demo's STD model")
        cfgs.append(amat)
        if self.init_margins:
            cfgs.append(replace(amat, margin_init=margin_init or PENDING))
        return cfgs

    def describe(self) -> list[str]:
        sat = ", ".join(f"{e:g}" for e in self.sat_eps)
        lv = ", ".join(f"{v:g}" for v in self.levels)
        return [
            f"data: {self.train_images} training / {self.test_images} test generated {self.size}x{self.size} images "
            f"(faintly textured ellipses among smooth blobs, synthetic.textured_segmentation); model: "
            f"{MODELS[self.model].__name__} width {self.width}, Adam lr {self.lr:g}, batch {self.batch}",
            f"budget per method: {self.clean_epochs} clean epochs (the STD model, shared) + {self.epochs} epochs "
            f"of its own; SAT and AMAT fine-tune from the STD weights and Adam state (no method trains from "
            f"scratch; training noise: {self.train_pgd_steps}-step L2 PGD, full radius)",
            f"methods: STD; SAT eps {sat}; AMAT Delta {self.delta:g} with xi = {self.xi_rule} of the STD model's "
            f"clean per-sample training losses (CE, soft-Dice), fixed while AMAT trains"
            + (f"; AMAT-init: the same, each margin starting at the sample's radius on the STD model (the smallest "
               f"L2 noise at which a term crosses xi, {self.margin_steps}-step minimal-norm search up to "
               f"{self.margin_search_max:g}), floored at Delta" if self.init_margins else ""),
            f"evaluation: clean, {self.eval_pgd_steps}-step L2 PGD and {self.ifgsm_steps}-step IFGSM at L2 noise "
            f"levels {lv} (a test image has L2 norm ~{self.size})",
        ]


# -- progress ----------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN / inf: nothing measured yet
        return "?:??"
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class DemoProgress:
    """Per-epoch lines with an ETA for the current method and for the whole demo.

    The whole-demo ETA counts work in "clean passes" (one training step's forward + backward
    of one image) and measures the seconds per pass as the demo runs. Relative costs, measured
    on the demo (2 CPU cores, SmallUNet): a PGD step (input gradient only, no optimizer)
    ~0.6 of a clean pass, an evaluation attack step ~0.8; so a clean epoch costs ``n``, an
    adversarial one ``n * (2 + 0.6 * pgd_steps)`` (clean and noisy pass plus the attack), an
    evaluation ``n_test * levels * (pgd + ifgsm steps) * 0.8``."""

    PGD_STEP = 0.6
    EVAL_STEP = 0.8

    def __init__(self, s: DemoSettings, log: Log) -> None:
        self.s, self.log = s, log
        n = s.train_images
        adv = n * (2 + self.PGD_STEP * s.train_pgd_steps)
        per_eval = s.test_images * (1 + len(s.levels) * (s.eval_pgd_steps + s.ifgsm_steps) * self.EVAL_STEP)
        self.plan = {"STD-clean": float(s.clean_epochs * n)}
        if s.init_margins:
            self.plan["margins"] = n * s.margin_steps * self.EVAL_STEP
        for cfg in s.methods():
            self.plan[cfg.label] = s.epochs * (n if cfg.mode == "none" else adv)
            self.plan[f"eval {cfg.label}"] = per_eval
        self.done: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @property
    def total(self) -> float:
        return float(sum(self.plan.values()))

    def finish(self, phase: str) -> None:
        self.done[phase] = self.plan.get(phase, 0)

    def eta_demo(self, phase: str, fraction: float) -> float:
        done = sum(self.done.values()) + self.plan.get(phase, 0) * fraction
        if done <= 0:
            return float("nan")
        rate = (time.perf_counter() - self.t0) / done
        return rate * (self.total - done)

    def epoch(self, phase: str, label: str, k: int, n: int, loss: float, seconds: list[float],
              summary: dict[str, float]) -> None:
        per = sum(seconds) / len(seconds)
        extra = ""
        if "margin_mean" in summary:
            extra = f"  margin mean {summary['margin_mean']:.2f} (max {summary['margin_max']:.2f})"
        eta_demo = self.eta_demo(phase, k / n)
        self.log(f"  [{label:>6}] epoch {k:>2}/{n}  loss {loss:.4f}{extra}  {per:.1f} s/epoch  "
                 f"ETA {label} {_clock(per * (n - k))}, demo {_clock(eta_demo)}")


# -- training ----------------------------------------------------------------------------------
def train_one(cfg: AdvConfig, xtr: Tensor, ytr: Tensor, epochs: int, batch: int, seed: int,
              log: Log, model: nn.Module | None = None, lr: float = 3e-3,
              on_epoch: Callable[[int, int, float, list[float], dict], None] | None = None,
              optimizer_state: dict | None = None) -> tuple[nn.Module, AdversarialLoop, float]:
    """Train ``model`` (a fresh TinySegNet if None) for ``epochs`` with ``cfg``; returns
    (model, its AdversarialLoop, seconds per epoch). ``optimizer_state``: an Adam state to
    continue from (fine-tuning continues the clean run's optimizer instead of restarting
    Adam, whose first steps would jolt a trained model); the final state is left in
    ``adv.optimizer_state``. ``on_epoch(k, n, loss, seconds, summary)`` is called after every
    epoch (default: one log line)."""
    if model is None:
        torch.manual_seed(seed)
        model = TinySegNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(copy.deepcopy(optimizer_state))
    adv = AdversarialLoop(model, seg_loss_terms, cfg, log=log)
    ids = torch.arange(xtr.shape[0])
    g = torch.Generator().manual_seed(seed)
    times: list[float] = []
    for ep in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=g)
        tot = 0.0
        for s in range(0, len(perm), batch):
            idx = perm[s:s + batch]
            loss = adv.loss((xtr[idx], ytr[idx], ids[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        summ = adv.epoch_end(ep)
        times.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(ep + 1, epochs, tot / len(perm), times, summ)
        else:
            extra = f"  margin mean {summ['margin_mean']:.3f} max {summ['margin_max']:.3f}" if "margin_mean" in summ else ""
            log(f"  [{cfg.label:>6}] epoch {ep + 1:>2}/{epochs} loss {tot / len(perm):.4f}{extra}")
    adv.optimizer_state = opt.state_dict()
    return model, adv, (sum(times) / len(times) if times else 0.0)


def clean_loss_terms(model: nn.Module, x: Tensor, y: Tensor, batch: int = 64) -> Tensor:
    """Per-sample clean loss terms ``[N, 2]`` of ``model`` (eval mode, no grad)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([seg_loss_terms(model(x[s:s + batch]), y[s:s + batch])
                              for s in range(0, x.shape[0], batch)])
    finally:
        model.train(was)


@dataclass
class DemoOutcome:
    results: dict[str, EvalResult]
    seconds_per_epoch: dict[str, float]
    train_seconds: dict[str, float]
    margins: list[float]
    margin_history: list[dict[str, float]]
    xi: list[float]
    settings: DemoSettings
    seconds: float
    trivial: float = 0.0            # ADI of the better constant mask (all object / all background)
    initial_margins: list[float] = field(default_factory=list)  # AMAT-init's start per sample (Delta floor applied)
    init_seconds: float = 0.0       # the radius search of step 2 (its cost)
    init_margins_final: list[float] = field(default_factory=list)  # AMAT-init's margins after training


def trivial_adi(y: Tensor) -> float:
    """ADI of the better of the two constant predictions (every pixel object / every pixel
    background) on labels ``y``: what a model that ignores its input scores."""
    from amat_hooks.evaluation.metrics import adi, dice_counts

    return max(adi(dice_counts(torch.full_like(y, v), y, labels=[1])) for v in (0, 1))


def make_data(s: DemoSettings, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    xtr, ytr = textured_segmentation(s.train_images, s.size, seed=seed, **s.data)
    xte, yte = textured_segmentation(s.test_images, s.size, seed=seed + 1000, **s.data)
    return xtr, ytr, xte, yte


def run_loop_demo(settings: DemoSettings | None = None, seed: int = 0, log: Log = print) -> DemoOutcome:
    """Steps 1-4 of the module docstring; ``log`` gets every progress line."""
    s = settings or DemoSettings()
    t_all = time.perf_counter()
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="amat-demo-") as tmp:
            return _run(s, seed, log, t_all, Path(tmp))
    finally:
        torch.set_num_threads(threads)


def write_demo_margins(s: DemoSettings, model: nn.Module, xtr: Tensor, ytr: Tensor, xi: Sequence[float],
                       path: Path) -> tuple[list[float], float]:
    """Step 2b (``init_margins``): each training image's radius on the clean model, written as
    ``amat calibrate --margins-out`` writes it (ids = the images' indices, as the loop keys its
    margins); returns AMAT-init's starting margins (radius floored at Delta) and the seconds
    the search took."""
    t0 = time.perf_counter()
    was = model.training
    model.eval()
    try:
        task = SegmentationEvalTask(model, xtr, ytr, seg_loss_terms, batch_size=len(xtr))
        radii: list[float | None] = []
        for batch in task.batches():  # in order: the ids are the images' indices
            radii += xi_radii(task, batch.x, batch.target, xi, max_radius=s.margin_search_max, steps=s.margin_steps)
    finally:
        model.train(was)
    seconds = time.perf_counter() - t0
    record = initial_margins_record("demo", list(range(len(xtr))), radii, max_radius=s.margin_search_max,
                                    steps=s.margin_steps, xi=xi, rule=s.xi_rule, term_names=["CE", "soft-Dice"],
                                    seconds=seconds)
    write_initial_margins(path, record)
    start = [max(s.margin_search_max if r is None else r, s.delta) for r in radii]
    return start, seconds


def _run(s: DemoSettings, seed: int, log: Log, t_all: float, tmp: Path) -> DemoOutcome:
    xtr, ytr, xte, yte = make_data(s, seed)
    prog = DemoProgress(s, log)
    results: dict[str, EvalResult] = {}
    spe: dict[str, float] = {}
    train_s: dict[str, float] = {}

    def epoch_cb(phase: str, label: str):
        return lambda k, n, loss, secs, summ: prog.epoch(phase, label, k, n, loss, secs, summ)

    log(f"[1/4] STD on clean data: {s.clean_epochs} epochs (the clean model every method starts from)")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    base = MODELS[s.model](s.width)
    _, base_adv, _ = train_one(AdvConfig(mode="none"), xtr, ytr, s.clean_epochs, s.batch, seed, log, model=base,
                               lr=s.lr, on_epoch=epoch_cb("STD-clean", "STD"))
    prog.finish("STD-clean")
    clean_s = time.perf_counter() - t0
    xi = xi_from_losses(clean_loss_terms(base, xtr, ytr), s.xi_rule).tolist()
    log(f"[2/4] calibration: xi = [{', '.join(f'{v:.4g}' for v in xi)}] ({s.xi_rule} of the STD model's clean "
        f"per-sample training losses: CE, soft-Dice)")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    margins: list[float] = []
    history: list[dict[str, float]] = []
    start: list[float] = []
    init_s = 0.0
    path = tmp / "initial_margins.json"
    if s.init_margins:
        start, init_s = write_demo_margins(s, base, xtr, ytr, xi, path)
        prog.finish("margins")
        srt = sorted(start)
        log(f"[2/4] initial margins for AMAT-init: per training image the smallest L2 noise at which CE or "
            f"soft-Dice crosses xi ({s.margin_steps}-step minimal-norm search, up to {s.margin_search_max:g}): "
            f"median {srt[len(srt) // 2]:.2f}, min {srt[0]:.2f}, max {srt[-1]:.2f} after the Delta floor; "
            f"{init_s:.1f} s")
    cfgs = s.methods(xi, margin_init=str(path) if s.init_margins else None)
    final_init: list[float] = []
    for i, cfg in enumerate(cfgs):
        what = ("clean training continued" if cfg.mode == "none" else
                f"SAT, eps {cfg.eps:g} for every sample" if cfg.mode == "sat" else
                f"AMAT, Delta {cfg.delta:g}, fixed xi"
                + (", margins from the radii of step 2" if cfg.margin_init else ""))
        log(f"[3/4] {cfg.label} ({i + 1}/{len(cfgs)}): {s.epochs} epochs from the STD weights, {what}")
        model = MODELS[s.model](s.width)
        model.load_state_dict(state)
        t0 = time.perf_counter()
        model, adv, per = train_one(cfg, xtr, ytr, s.epochs, s.batch, seed + 1, log, model=model, lr=s.lr,
                                    on_epoch=epoch_cb(cfg.label, cfg.label),
                                    optimizer_state=base_adv.optimizer_state)
        prog.finish(cfg.label)
        train_s[cfg.label] = time.perf_counter() - t0 + clean_s
        spe[cfg.label] = per
        if cfg.mode == "amat" and cfg.margin_init:
            final_init = adv.policy.margins.values().tolist()
        elif cfg.mode == "amat":
            margins = adv.policy.margins.values().tolist()
            history = list(adv.amat_history)
        t0 = time.perf_counter()
        task = SegmentationEvalTask(model, xte, yte, seg_loss_terms, batch_size=len(xte))
        results[cfg.label] = robustness_eval(task, s.levels, pgd_steps=s.eval_pgd_steps,
                                             ifgsm_steps=s.ifgsm_steps, progress=False, seed=seed)
        prog.finish(f"eval {cfg.label}")
        r = results[cfg.label]
        log(f"[4/4] evaluated {cfg.label} in {time.perf_counter() - t0:.0f} s: clean ADI {r.clean['ADI']:.4f}, "
            f"PGD " + ", ".join(f"{lv:g}: {v:.4f}" for lv, v in zip(r.levels, r.curve('pgd')))
            + f"; demo ETA {_clock(prog.eta_demo('', 0.0))}")
    return DemoOutcome(results=results, seconds_per_epoch=spe, train_seconds=train_s, margins=margins,
                       margin_history=history, xi=xi, settings=s, seconds=time.perf_counter() - t_all,
                       trivial=trivial_adi(yte), initial_margins=start, init_seconds=init_s,
                       init_margins_final=final_init)
