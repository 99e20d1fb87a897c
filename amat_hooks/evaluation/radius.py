"""Each sample's robust radius: the smallest L2 noise that breaks it, from one minimal-norm
attack (:func:`min_norm`), under the task's training loss, a segmentation objective or one of
the task's objectives aimed at its metric (:meth:`EvalTask.objectives`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.attacks import _bcast, _check_steps_and_bounds, _check_terms, _clamp, _norms, _per_sample, _project, preserved_state
from amat_hooks.evaluation.objectives import SEGMENTATION_OBJECTIVES, segmentation_step_fn, supports_segmentation
from amat_hooks.evaluation.result import DEFAULT_RADIUS_THRESHOLD, _broken
from amat_hooks.evaluation.task import AttackNotSupported, EvalTask, not_segmentation, score_rows
from amat_hooks.thresholds import accepted

#: objectives of the radius run: ``loss`` = the task's training loss, or a segmentation objective
#: (plus, per task, the names of its aimed objectives)
RADIUS_OBJECTIVES = ("loss", *SEGMENTATION_OBJECTIVES)


@dataclass(frozen=True)
class RadiusSpec:
    """The radius run: per sample the smallest L2 noise that breaks it (:func:`amat_hooks.attacks.min_norm`).

    ``threshold`` 0.5 with ``relative``: broken when the sample's metric falls below half
    its clean value (lower-is-better metrics: above twice); ``relative=False``: below
    ``threshold`` itself. ``objectives``: ``loss`` (the task's training loss), ``segpgd``,
    ``cospgd``, ``mce`` or a name of the task's aimed objectives (landmarks: ``heatmap``,
    ``vote``; detection: ``suppress``, ``displace``); ``auto`` = ``mce`` for segmentation tasks,
    else ``loss``; several = the per-sample minimum. ``max_radius`` (default twice the largest level) bounds the
    search: a sample not broken within it has radius ``inf``.
    """

    objectives: tuple[str, ...] = ("auto",)
    threshold: float = DEFAULT_RADIUS_THRESHOLD
    relative: bool = True
    steps: int = 100
    max_radius: float | None = None

    def resolved(self, task: "EvalTask", levels: Sequence[float]) -> "RadiusSpec":
        objs = []
        known = (*RADIUS_OBJECTIVES, *_aimed(task))
        for o in self.objectives:
            o = ("mce" if supports_segmentation(task) else "loss") if o == "auto" else o
            if o not in known:
                raise ValueError(f"unknown radius objective {o!r}; choose from {('auto', *known)}")
            if o in SEGMENTATION_OBJECTIVES and not supports_segmentation(task):
                raise AttackNotSupported(not_segmentation(task, f"radius objective {o}"))
            if o not in objs:
                objs.append(o)
        if not objs:
            raise ValueError("the radius run needs at least one objective")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"the radius threshold must be > 0, got {self.threshold}")
        if self.relative and task.higher_is_better and self.threshold > 1:
            raise ValueError(f"a relative threshold above 1 ({self.threshold}) breaks samples without noise")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"radius steps must be an integer >= 1, got {self.steps!r}")
        mx = float(self.max_radius) if self.max_radius is not None else 2.0 * max(levels)
        if not (math.isfinite(mx) and mx > 0):
            raise ValueError(f"the maximum radius must be > 0, got {mx}")
        return RadiusSpec(objectives=tuple(objs), threshold=float(self.threshold), relative=bool(self.relative),
                          steps=self.steps, max_radius=mx)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = list(self.objectives)
        return d


def _aimed(task: Any) -> dict:
    fn = getattr(task, "objectives", None)
    return dict(fn()) if fn is not None else {}


def _radius(task: EvalTask, x: Tensor, target: Any, clean_stats: list, spec: RadiusSpec,
            aimed: dict | None = None) -> tuple[dict, dict]:
    """Per objective, each sample's radius (None = not broken within ``max_radius``) and its
    score at the breaking point (measured again through ``task.measure``)."""
    aimed = _aimed(task) if aimed is None else aimed
    clean = torch.tensor(score_rows(task, clean_stats), dtype=torch.float64, device=x.device)
    floor = task.floor()

    def broken(scores: Tensor) -> Tensor:  # on the device: no host sync per step
        return _broken(scores.to(clean.device, torch.float64), clean, spec.threshold, spec.relative,
                       task.higher_is_better, floor)

    radii, scores = {}, {}
    for obj in spec.objectives:
        if obj == "loss" or obj in aimed:
            fn = (lambda z, t: task.loss_terms(z, t, 1)) if obj == "loss" else (lambda z, t, f=aimed[obj].terms: f(z, t, 1))

            def step(z, it, steps, fn=fn):
                t = fn(z, target)
                with torch.no_grad():
                    s = torch.tensor(score_rows(task, task.measure(z.detach(), target)), dtype=torch.float64)
                return t, broken(s)  # measure() is the task's: one extra no-grad forward per step
        else:
            step = segmentation_step_fn(task, obj, target, 1, broken)
        res = min_norm(step, x, max_radius=spec.max_radius, steps=spec.steps, bounds=task.bounds,
                       model=task.model)
        with torch.no_grad():
            at = score_rows(task, task.measure(res.x_adv, target))
        radii[obj] = [float(r) if bool(f) else None for r, f in zip(res.radius.tolist(), res.found.tolist())]
        scores[obj] = at
    return radii, scores


def xi_radii(task: EvalTask, x: Tensor, target: Any, xi: Sequence[float], *, max_radius: float,
             steps: int = 100) -> list[float | None]:
    """Per sample, the smallest L2 noise at which one of its training-loss terms is no longer
    below xi (eq. 2 fails): the paper's margin, measured on the clean model. 0 where the clean
    sample already fails; None where no noise within ``max_radius`` fails it. An upper bound of
    the true radius, within the search's final precision (0.5 %)."""
    xi_t = torch.as_tensor([float(v) for v in xi], dtype=torch.float32, device=x.device)

    def step(z: Tensor, it: int, n: int) -> tuple[Tensor, Tensor]:
        terms = task.loss_terms(z, target, 1)
        return terms, ~accepted(terms, xi_t.to(terms.dtype))

    res = min_norm(step, x, max_radius=max_radius, steps=steps, bounds=task.bounds, model=task.model)
    return [float(r) if bool(f) else None for r, f in zip(res.radius.tolist(), res.found.tolist())]


class MinNormResult:
    """What :func:`min_norm` returns; all tensors are detached.

    ``radius[i]`` is the smallest noise norm at which sample i was found broken (``inf``
    where no iterate within ``max_radius`` broke it, 0 where it is broken without noise);
    ``x_adv[i]`` is that point (``x[i]`` where none was found); ``found[i]`` says whether
    there is one. The radius is an upper bound of the sample's true minimal radius under
    this objective: the attack found a breaking point at that distance.
    """

    def __init__(self, x_adv: Tensor, radius: Tensor, found: Tensor, steps_run: int) -> None:
        self.x_adv, self.radius, self.found, self.steps_run = x_adv, radius, found, steps_run

    def __repr__(self) -> str:
        fin = self.radius[self.found]
        med = f"{float(fin.median()):.4g}" if fin.numel() else "-"
        return (f"MinNormResult(batch={self.x_adv.shape[0]}, found={int(self.found.sum())}, "
                f"median_radius={med}, steps_run={self.steps_run})")


#: :func:`min_norm` defaults: the per-sample radius moves by ``gamma`` (relative) per step,
#: annealed from 5 % to 0.5 % (the radius precision at the end); the ascent step is
#: ``alpha`` times the current radius, annealed from 0.5 to 0.02; a sample not yet broken
#: grows its radius from ``init`` to ``max_radius`` within ``GROW_FRACTION`` of the steps.
MIN_NORM_GAMMA = (0.05, 0.005)
MIN_NORM_ALPHA = (0.5, 0.02)
GROW_FRACTION = 0.3


def min_norm(
    step_fn: Callable[[Tensor, int, int], tuple[Tensor, Tensor]],
    x: Tensor,
    *,
    max_radius: float | Tensor,
    init: float | Tensor | None = None,
    steps: int = 100,
    gamma: tuple[float, float] = MIN_NORM_GAMMA,
    alpha: tuple[float, float] = MIN_NORM_ALPHA,
    bounds: tuple[float, float] | None = None,
    model: nn.Module | None = None,
) -> MinNormResult:
    """Smallest L2 noise that breaks each sample: a minimal-norm attack in the style of
    FMN (Pintor et al. 2021) with a per-sample radius, in L2.

    ``step_fn(x_adv, iteration, steps)`` returns ``(terms, broken)`` from ONE forward pass:
    loss terms ``[B]``/``[B, K]`` to ascend and a bool ``[B]`` saying whether each sample
    is broken at ``x_adv`` (e.g. its Dice fell below half its clean Dice). Each step:
    record the smallest broken iterate per sample; adapt that sample's radius eps (not
    broken yet: grow geometrically from ``init`` to ``max_radius``; broken:
    ``eps = min(eps (1 - gamma), best)``; not broken after a break: ``eps (1 + gamma)``,
    gamma annealed by a cosine); move along the unit-L2 gradient of the terms by
    ``alpha * eps`` (annealed the same way); project onto the ball of radius eps; clamp
    to ``bounds``. So samples that break early spend their steps refining their own
    radius, while robust ones keep searching further out, in one batched loop. The last
    iterate is checked once more (one no-grad forward).
    """
    _check_steps_and_bounds(steps, bounds)
    x = x.detach()
    batch = x.shape[0]
    max_t = _per_sample(max_radius, batch, "max_radius", x)
    if not bool((max_t > 0).all()):
        raise ValueError("max_radius must be > 0 for every sample")
    init_t = (max_t / 16 if init is None else _per_sample(init, batch, "init", x)).clamp(min=1e-6)
    init_t = torch.minimum(init_t, max_t)
    grow_steps = max(1, int(round(GROW_FRACTION * steps)))
    grow = (max_t / init_t).pow(1.0 / grow_steps)
    dev = x.device
    eps = init_t.clone()
    delta = torch.zeros_like(x)
    best = torch.full((batch,), math.inf, device=dev)
    best_delta = torch.zeros_like(x)
    found = torch.zeros(batch, dtype=torch.bool, device=dev)

    def record(broken: Tensor, d: Tensor) -> Tensor:
        nonlocal best, best_delta
        n = _norms(d.float(), "l2")
        better = broken & (n < best)
        best = torch.where(better, n, best)
        best_delta = torch.where(_bcast(better, d), d, best_delta)
        return broken

    def checked(out, n) -> tuple[Tensor, Tensor]:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("step_fn must return (terms, broken) from one forward pass")
        terms, broken = out
        terms = _check_terms(terms, n)
        broken = torch.as_tensor(broken, device=dev).reshape(-1).bool()
        if broken.shape != (n,):
            raise ValueError(f"step_fn's broken mask must be [B]=[{n}], got {tuple(broken.shape)}")
        return terms, broken & torch.isfinite(terms.detach()).all(dim=1)

    with preserved_state(model):
        for k in range(steps):
            d = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                terms, broken = checked(step_fn(x + d, k, steps), batch)
                total = terms.sum()
            if not total.requires_grad:
                raise ValueError("step_fn's terms do not depend on the input with autograd; "
                                 "do not detach or compute them under torch.no_grad()")
            (grad,) = torch.autograd.grad(total, d)
            record(broken.detach(), delta)
            found |= broken
            c = (1 + math.cos(math.pi * k / steps)) / 2
            gam = gamma[1] + (gamma[0] - gamma[1]) * c
            a = alpha[1] + (alpha[0] - alpha[1]) * c
            eps = torch.where(found, torch.where(broken, torch.minimum(eps * (1 - gam), best), eps * (1 + gam)),
                              eps * grow)
            eps = torch.minimum(eps, max_t)
            g = grad / _bcast(_norms(grad, "l2").clamp_min(1e-12), grad)
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            delta = delta + _bcast(a * eps, x).to(x.dtype) * g
            delta = _clamp(x + _project(delta, eps, "l2"), bounds) - x
        with torch.no_grad():
            _, broken = checked(step_fn(x + delta, steps, steps), batch)
            record(broken, delta)
            found |= broken
    x_adv = torch.where(_bcast(found, x), x + best_delta, x).detach()
    return MinNormResult(x_adv=x_adv, radius=best, found=found, steps_run=steps)
