"""L2 / Linf PGD and IFGSM with one radius per sample and an optional loss boundary.

One implementation serves training (SAT: fixed eps; AMAT: eps = margin E(i), full radius
as in Algorithm 1, or - the opt-in ``boundary="stop"`` variant - stopping at the
loss-defined boundary) and evaluation (100-step PGD, 10-step IFGSM and the objectives of
:mod:`amat_hooks.evaluation.objectives`, several noise levels in one call by repeating the
batch with a per-sample eps).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor], Tensor]


class IterationLoss:
    """A loss whose terms depend on the attack iteration (SegPGD's weight moves from the
    correct to the wrong pixels): :func:`pgd` calls ``terms_at(x_adv, iteration, steps)``
    (0-based) in its loop; everything else calls ``loss_fn(x_adv)``, the final weighting."""

    def terms_at(self, x: Tensor, iteration: int | None, steps: int | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.terms_at(x, None, None)


def _loss_at(loss_fn, z: Tensor, iteration: int, steps: int) -> Tensor:
    at = getattr(loss_fn, "terms_at", None)
    return at(z, iteration, steps) if at is not None else loss_fn(z)

#: PGD step relative to the radius (``alpha * eps / steps``): 2.5, the Madry lab's rule of
#: thumb, so the iterate can cross the ball in 40 % of the steps. The authors' AMAT code uses 4
#: (nnU-Net) or 5 (YOLO, landmarks) with 20 steps; ``--adv-alpha`` sets it.
DEFAULT_ALPHA = 2.5

_NORMS = ("l2", "linf")


class AttackResult:
    """What an attack returns; all tensors are detached.

    ``noise_norm[i] = ||x_adv[i] - x[i]||``. ``crossed[i]`` is True when sample i reached
    its loss boundary (``x_adv`` is then the crossing side of the bisected boundary point).
    ``finite[i]`` is False when its loss terms were NaN/inf at an evaluated iterate (its
    noise then stops moving). ``terms`` ``[B, K]`` are the loss terms at ``x_adv``; without
    a boundary they are computed on first access (one extra forward pass only if asked
    for: training uses the terms of its own noisy forward pass instead).
    """

    def __init__(self, x_adv: Tensor, noise_norm: Tensor, crossed: Tensor, finite: Tensor,
                 steps_run: int, terms: Tensor | None = None,
                 terms_fn: Callable[[], Tensor] | None = None, failed_any: Tensor | None = None) -> None:
        self.x_adv, self.noise_norm, self.crossed, self.finite = x_adv, noise_norm, crossed, finite
        self.steps_run = steps_run
        self.failed_any = torch.zeros_like(finite) if failed_any is None else failed_any
        self._terms = terms
        self._terms_fn = terms_fn

    @property
    def terms(self) -> Tensor:
        if self._terms is None:
            self._terms = self._terms_fn()
            self._terms_fn = None
        return self._terms


def _per_sample(value: float | Tensor, batch: int, name: str, like: Tensor) -> Tensor:
    """Turn a float or a [B] tensor into a float [B] tensor on x's device, validated."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(
                f"{name} must be a float or a tensor of shape [B]=[{batch}] (one value per "
                f"sample), got shape {tuple(value.shape)}; pass eps[i] per sample or one float"
            )
        out = value.detach().to(device=like.device, dtype=torch.float32)
    else:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name} must be a float or a [B] tensor, got {type(value).__name__}")
        out = torch.full((batch,), float(value), device=like.device, dtype=torch.float32)
    if not torch.isfinite(out).all() or (out < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 for every sample (got min {out.min().item():g}); "
                         f"use 0 to leave a sample unperturbed")
    return out


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, ...] to broadcast against x."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def _norms(v: Tensor, norm: str) -> Tensor:
    flat = v.flatten(1)
    return flat.norm(p=2, dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    """Project each sample's noise onto the ball of radius eps[i] (exact, no rescale above 1)."""
    if norm == "linf":
        e = _bcast(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    n = _norms(delta, "l2")
    scale = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _bcast(scale, delta)


#: Random starts: ``ball`` uniform in the ball of radius eps (the default); ``sphere`` the
#: authors' code: on the sphere of radius ``start_radius`` (their ``max(E - Delta, Delta)``,
#: capped at eps), direction a uniform cube draw normalised, not clamped to the input bounds.
STARTS = ("ball", "sphere")


def _random_start(x: Tensor, eps: Tensor, norm: str, generator: torch.Generator | None, mode: str = "ball",
                  radius: Tensor | None = None) -> Tensor:
    """``ball``: uniform in the ball (volume-uniform: radius eps * u^(1/d)); ``sphere``: see :data:`STARTS`."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * _bcast(eps, x).to(x.dtype)
    if mode == "sphere":
        g = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        r = torch.minimum(radius, eps) if radius is not None else eps
    else:
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float32)
        r = eps * u.pow(1.0 / x[0].numel())
    return g / _bcast(_norms(g, "l2").clamp_min(1e-12), g) * _bcast(r, x).to(x.dtype)


def _check_steps_and_bounds(steps: int, bounds: tuple[float, float] | None) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if bounds is not None and not (len(bounds) == 2 and bounds[0] < bounds[1]):
        raise ValueError(f"bounds must be (lo, hi) with lo < hi, got {bounds!r}")


def _clamp(x_adv: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    return x_adv if bounds is None else x_adv.clamp(bounds[0], bounds[1])


def _check_terms(terms: Tensor, batch: int) -> Tensor:
    if not isinstance(terms, Tensor):
        raise TypeError(f"loss_fn must return a tensor of per-sample loss terms, got {type(terms).__name__}")
    if terms.dim() == 1:
        terms = terms.unsqueeze(1)
    if terms.dim() != 2 or terms.shape[0] != batch:
        raise ValueError(
            f"loss_fn must return per-sample loss terms of shape [B] or [B, K] with B={batch}, "
            f"got {tuple(terms.shape)}; do not reduce over the batch (use reduction='none')"
        )
    return terms


def _crossing(terms: Tensor, boundary: Tensor) -> Tensor:
    """A sample crosses when NOT all of its terms are < xi[k] (NaN counts as not crossing).

    ``boundary`` is ``[K]`` (one xi for all) or ``[B, K]`` (a row of +inf exempts a sample)."""
    finite = torch.isfinite(terms).all(dim=1)
    return ~(terms < boundary).all(dim=1) & finite


def _norm_modules(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            yield m


@contextlib.contextmanager
def preserved_state(model: nn.Module | None) -> Iterator[None]:
    """Restore train/eval mode of every module and all normalisation buffers on exit.

    Why: the attack runs the model many times; running means/vars and
    ``num_batches_tracked`` must be exactly as if it never ran.
    """
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    saved = []
    for m in _norm_modules(model):
        for name, buf in m.named_buffers(recurse=False):
            if buf is not None:
                saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                # .data: restore without bumping the autograd version counter, so a clean
                # forward taken before the attack can still back-propagate (BN saves its
                # running buffers for backward but does not use them in training mode).
                buf.data.copy_(copy)
        for m, mode in modes:
            m.training = mode


def _mark_crossing(terms, xi, active, crossed, prev, delta, inside, hi, hi_terms):
    """Freeze samples that crossed at this iterate; remember the bracket (prev, delta).

    Updates ``crossed`` and ``active`` in place; returns the new bracket tensors.
    """
    new = _crossing(terms, xi) & active
    m = _bcast(new, delta)
    crossed |= new
    active &= ~new
    return (torch.where(m, prev, inside), torch.where(m, delta, hi),
            torch.where(new.unsqueeze(1), terms, hi_terms))


def _pgd_step_sizes(step_size, alpha, eps_t: Tensor, steps: int, x: Tensor) -> Tensor:
    """Per-sample PGD step: ``step_size`` if given, else ``alpha * eps / steps``."""
    if step_size is not None:
        return _per_sample(step_size, x.shape[0], "step_size", x)
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be > 0 (the PGD step is alpha * eps / steps), got {alpha!r}")
    return float(alpha) * eps_t / steps


def _boundary_tensor(boundary, batch: int, x: Tensor) -> Tensor | None:
    """xi as ``[K]`` (shared) or ``[B, K]`` (per sample), or None without a boundary."""
    if boundary is None:
        return None
    xi = torch.as_tensor(boundary, dtype=torch.float32, device=x.device)
    if xi.dim() == 2 and xi.shape[0] != batch:
        raise ValueError(f"a per-sample boundary must be [B, K] with B={batch}, got {tuple(xi.shape)}")
    return xi if xi.dim() == 2 else xi.reshape(-1)


def _bisect_to_boundary(loss_fn, x, xi, crossed, inside, hi, hi_terms, refine_steps):
    """Halve the segment between each crossed sample's last inside noise and its first
    outside noise ``refine_steps`` times; returns the outside end and its terms."""
    batch = x.shape[0]
    lo_d = inside
    for _ in range(refine_steps):
        mid = (lo_d + hi) / 2
        t = _check_terms(loss_fn(x + mid), batch).float()
        out = (_crossing(t, xi) | ~torch.isfinite(t).all(dim=1)) & crossed
        ob = _bcast(out, x)
        hi = torch.where(ob, mid, hi)
        hi_terms = torch.where(out.unsqueeze(1), t, hi_terms)
        lo_d = torch.where(ob, lo_d, mid)
    return hi, hi_terms


def pgd(
    loss_fn: LossFn,
    x: Tensor,
    eps: float | Tensor,
    *,
    steps: int,
    step_size: float | Tensor | None = None,
    alpha: float = DEFAULT_ALPHA,
    norm: str = "l2",
    random_start: bool | str = True,
    bounds: tuple[float, float] | None = None,
    boundary: Tensor | Sequence[float] | None = None,
    refine_steps: int = 10,
    model: nn.Module | None = None,
    generator: torch.Generator | None = None,
    start_radius: Tensor | None = None,
    watch: Tensor | Sequence[float] | None = None,
) -> AttackResult:
    """Projected gradient ascent on the sum of per-sample loss terms.

    ``loss_fn(x_adv)`` returns terms ``[B]`` or ``[B, K]`` (an :class:`IterationLoss` is
    asked ``terms_at(x_adv, iteration, steps)`` inside the loop). Each step moves every sample
    along its own gradient normalised to unit L2 norm (sign for ``norm="linf"``) by
    ``step_size[i]`` (default ``alpha * eps / steps``), projects the noise onto the ball of
    radius ``eps[i]`` and clamps to ``bounds``. ``eps[i] == 0`` leaves sample i unchanged.
    Without ``boundary`` every iteration runs and the last iterate is returned: Algorithm
    1's ``PGD(x, y, E(i))`` (and the authors' code), which ends on the sphere
    ``||noise|| = eps`` whenever the projection binds.

    With ``boundary`` (thresholds xi ``[K]``, or ``[B, K]`` per sample; a row of +inf
    exempts that sample), a sample whose terms are not all ``< xi`` stops;
    ``refine_steps`` bisection steps between its last inside and first outside iterate put
    it on the boundary (the opt-in ``--adv-boundary stop`` training variant).

    ``random_start``: True / ``"ball"``, ``"sphere"`` (:data:`STARTS`, ``start_radius``) or False.
    ``watch`` (xi ``[K]``): ``failed_any[i]`` of the result says whether any iterate the loop
    evaluated (the start and every step but the last) had a term not ``< xi`` (the authors'
    acceptance at every iterate; no host sync). Pass ``model`` to have its modes and
    normalisation statistics restored afterwards. Parameter ``.grad`` fields are never touched.
    """
    _check_steps_and_bounds(steps, bounds)
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {_NORMS}")
    if not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    x = x.detach()
    batch = x.shape[0]
    eps_t = _per_sample(eps, batch, "eps", x)
    step_t = _pgd_step_sizes(step_size, alpha, eps_t, steps, x)
    xi = _boundary_tensor(boundary, batch, x)
    watch_t = _boundary_tensor(watch, batch, x)
    mode = "sphere" if random_start == "sphere" else "ball"
    if random_start not in (True, False, *STARTS):
        raise ValueError(f"random_start must be True, False or one of {STARTS}, got {random_start!r}")

    with preserved_state(model):
        delta = (_random_start(x, eps_t, norm, generator, mode, start_radius) if random_start
                 else torch.zeros_like(x))
        if mode == "ball":
            delta = _clamp(x + delta, bounds) - x
        failed_any = torch.zeros(batch, dtype=torch.bool, device=x.device)
        finite = torch.ones(batch, dtype=torch.bool, device=x.device)
        active = torch.ones(batch, dtype=torch.bool, device=x.device)
        crossed = torch.zeros(batch, dtype=torch.bool, device=x.device)
        prev = torch.zeros_like(x)  # last iterate known inside the boundary (clean x)
        inside = hi = hi_terms = None
        alpha_b = _bcast(step_t, x).to(x.dtype)
        steps_run = 0
        for _ in range(steps):
            d = delta.detach().requires_grad_(True)
            with torch.enable_grad():  # callers often evaluate under no_grad
                terms = _loss_at(loss_fn, x + d, steps_run, steps)
                total = terms.sum()
            if steps_run == 0:
                terms = _check_terms(terms, batch)
            elif terms.dim() == 1:
                terms = terms.unsqueeze(1)
            if not total.requires_grad:
                raise ValueError("loss_fn output does not depend on its input with autograd; "
                                 "do not detach or compute it under torch.no_grad()")
            (grad,) = torch.autograd.grad(total, d)
            terms = terms.detach().float()
            ok = torch.isfinite(terms).all(dim=1)
            finite &= ok
            if watch_t is not None:
                failed_any |= ~(terms < watch_t).all(dim=1)
            if xi is not None:
                if inside is None:
                    inside, hi, hi_terms = prev.clone(), delta.clone(), terms.clone()
                inside, hi, hi_terms = _mark_crossing(terms, xi, active, crossed, prev, delta,
                                                      inside, hi, hi_terms)
                prev = torch.where(_bcast(active, x), delta, prev)
                ok = ok & active
            if norm == "l2":
                g = grad / _bcast(_norms(grad, "l2").clamp_min(1e-12), grad)
            else:
                g = grad.sign()
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            step = alpha_b * g * _bcast(ok, x).to(g.dtype)
            delta = _clamp(x + _project(delta + step, eps_t, norm), bounds) - x
            steps_run += 1
            if xi is not None and not bool(active.any()):
                break

        final_terms = None
        if xi is not None:
            with torch.no_grad():
                if bool(active.any()):  # the last iterate was never evaluated
                    final_terms = _check_terms(loss_fn(x + delta), batch).float()
                    finite &= torch.isfinite(final_terms).all(dim=1)
                    inside, hi, hi_terms = _mark_crossing(final_terms, xi, active, crossed, prev,
                                                          delta, inside, hi, hi_terms)
                if bool(crossed.any()):
                    hi, hi_terms = _bisect_to_boundary(loss_fn, x, xi, crossed, inside, hi, hi_terms,
                                                       refine_steps)
                    delta = torch.where(_bcast(crossed, x), hi, delta)
                final_terms = hi_terms if final_terms is None else torch.where(
                    crossed.unsqueeze(1), hi_terms, final_terms)

    x_adv = (x + delta).detach()

    def lazy_terms() -> Tensor:
        with preserved_state(model), torch.no_grad():
            return _check_terms(loss_fn(x_adv), batch).float()

    return AttackResult(x_adv=x_adv, noise_norm=_norms((x_adv - x).float(), norm), crossed=crossed, finite=finite,
                        steps_run=steps_run, terms=final_terms, terms_fn=None if final_terms is not None else lazy_terms,
                        failed_any=failed_any)


def ifgsm(
    loss_fn: LossFn,
    x: Tensor,
    eps: float | Tensor,
    *,
    steps: int = 10,
    step_size: float | Tensor | None = None,
    norm: str = "l2",
    bounds: tuple[float, float] | None = None,
    model: nn.Module | None = None,
) -> AttackResult:
    """The paper's IFGSM evaluation attack: the same L2 iteration as :func:`pgd` WITHOUT a
    random start, with step ``eps / steps`` by default (Kurakin et al.), no boundary."""
    if step_size is None:
        batch = x.shape[0]
        step_size = _per_sample(eps, batch, "eps", x) / (steps if isinstance(steps, int) and steps > 0 else 1)
    return pgd(loss_fn, x, eps, steps=steps, step_size=step_size, norm=norm,
               random_start=False, bounds=bounds, model=model)
