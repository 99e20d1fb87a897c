"""The threshold xi (paper section 2.2) and the multi-term acceptance test (section 2.3).

Rules (a statistic of the clean per-sample training terms, per term): ``mean`` and
``mean+2std`` (the paper), ``max`` (the authors' YOLOv5 code: evaluate_adv_get_dist.py) and
``huber+K`` (their landmark code: Huber's proposal-2 location + K scales, K = 3 there).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

#: The rules every xi file holds (``huber+K`` with another K is computed when asked for).
RULES = ("mean", "mean+2std", "max", "huber+3")


def _huber_k(rule: str) -> float | None:
    if not rule.startswith("huber+"):
        return None
    try:
        k = float(rule[len("huber+"):])
    except ValueError:
        return None
    return k if math.isfinite(k) and k >= 0 else None


def check_rule(rule: str) -> None:
    if rule not in RULES and _huber_k(str(rule)) is None:
        raise ValueError(f"unknown xi rule {rule!r}; use one of {', '.join(RULES)} (or huber+K for another K)")


def huber_location_scale(values: Tensor, c: float = 1.5, tol: float = 1e-8, maxiter: int = 30) -> tuple[float, float]:
    """Huber's proposal 2: location and scale estimated jointly (the defaults of statsmodels'
    ``robust.scale.Huber``, which the authors' landmark code calls). Starts from the median
    and the normalised MAD; each step clips the values at ``mu +- c scale`` for the location
    and rescales with the consistency constant of the normal distribution."""
    a = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    mu = torch.quantile(a, 0.5)
    scale = torch.quantile((a - mu).abs(), 0.5) / 0.6744897501960817  # MAD, normal-consistent
    if float(scale) == 0.0:
        return float(mu), 0.0
    cdf = 0.5 * (1 + math.erf(c / math.sqrt(2)))
    inner = 2 * cdf - 1
    gamma = inner + c * c * (1 - inner) - 2 * c * math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    n = a.numel() - 1
    for _ in range(maxiter):
        new_mu = a.clamp(float(mu - c * scale), float(mu + c * scale)).mean()
        inside = ((a - mu) / scale).abs() <= c
        new_scale = torch.sqrt(torch.where(inside, (a - new_mu) ** 2, (scale * c) ** 2).sum() / (n * gamma))
        if abs(float(scale - new_scale)) <= float(new_scale) * tol and abs(float(mu - new_mu)) <= float(new_scale) * tol:
            return float(new_mu), float(new_scale)
        mu, scale = new_mu, new_scale
    raise ValueError(f"Huber's location and scale did not converge in {maxiter} iterations")


def _as_2d(losses: Tensor) -> Tensor:
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if losses.dim() == 1:
        losses = losses.unsqueeze(1)
    if losses.dim() != 2:
        raise ValueError(f"losses must be [N] or [N, K], got shape {tuple(losses.shape)}")
    return losses


def xi_from_losses(losses: Tensor, rule: str = "mean") -> Tensor:
    """xi[k] = the rule's statistic of term k over the clean training samples: the mean, mean +
    2 std (population std, ddof=0, as numpy's ``std``), the maximum, or Huber's location + K
    scales. Non-finite values are ignored. Returns float32 ``[K]``.
    """
    check_rule(rule)
    v = _as_2d(losses)
    ok = torch.isfinite(v)
    if not ok.any(dim=0).all():
        raise ValueError("every loss term needs at least one finite clean loss value to build xi")
    if rule == "max":
        return torch.stack([v[ok[:, k], k].max() for k in range(v.shape[1])]).float()
    k_scales = _huber_k(rule)
    if k_scales is not None:
        loc_scale = [huber_location_scale(v[ok[:, k], k]) for k in range(v.shape[1])]
        return torch.tensor([m + k_scales * s for m, s in loc_scale], dtype=torch.float32)
    cnt = ok.sum(0).to(torch.float64)
    vz = torch.where(ok, v, torch.zeros_like(v))
    mean = vz.sum(0) / cnt
    if rule == "mean":
        return mean.float()
    var = (torch.where(ok, (v - mean) ** 2, torch.zeros_like(v))).sum(0) / cnt
    return (mean + 2 * var.sqrt()).float()


def accepted(terms: Tensor, xi: Tensor) -> Tensor:
    """Bool ``[B]``: True where ALL of a sample's terms are strictly below xi (eq. 2).

    NaN terms are never accepted.
    """
    t = terms.detach()
    if t.dim() == 1:
        t = t.unsqueeze(1)
    xi = torch.as_tensor(xi, dtype=t.dtype, device=t.device).reshape(-1)
    if xi.numel() != t.shape[1]:
        raise ValueError(f"xi has {xi.numel()} thresholds but the loss has {t.shape[1]} terms per sample")
    return (t < xi).all(dim=1)


class OnlineThreshold:
    """xi estimated from the clean per-sample losses seen during training.

    For users without a pre-trained clean model: per term a running mean/variance
    (Welford, or an exponential moving average with ``momentum`` so xi follows the loss
    as training makes it fall). ``xi()`` applies the same rule as :func:`xi_from_losses`.
    """

    def __init__(self, rule: str = "mean", momentum: float | None = 0.01, min_samples: int = 1) -> None:
        if rule not in ("mean", "mean+2std"):
            raise ValueError(f"the online xi estimate supports the rules mean and mean+2std, not {rule!r}; compute "
                             f"{rule} xi from a clean model with amat calibrate and pass it as --adv-xi-file")
        if momentum is not None and not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1] or None, got {momentum}")
        self.rule = rule
        self.momentum = momentum
        self.min_samples = min_samples
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None  # Welford sum of squares, or EMA variance

    @property
    def ready(self) -> bool:
        return self.count >= self.min_samples and self.mean is not None

    def update(self, terms: Tensor) -> None:
        v = _as_2d(terms.detach().cpu())
        v = v[torch.isfinite(v).all(dim=1)]
        n = v.shape[0]
        if n == 0:
            return
        bmean = v.mean(0)
        bvar = v.var(0, unbiased=False)
        if self.mean is None:
            self.mean, self.m2 = bmean, (bvar * n if self.momentum is None else bvar)
            self.count = n
            return
        if self.mean.numel() != bmean.numel():
            raise ValueError(f"online xi was built for {self.mean.numel()} loss terms, got {bmean.numel()}")
        if self.momentum is None:  # Chan et al. parallel Welford merge
            tot = self.count + n
            d = bmean - self.mean
            self.mean = self.mean + d * n / tot
            self.m2 = self.m2 + bvar * n + d ** 2 * self.count * n / tot
            self.count = tot
        else:
            m = self.momentum
            d = bmean - self.mean
            self.mean = self.mean + m * d
            self.m2 = (1 - m) * (self.m2 + m * d ** 2) + m * bvar
            self.count += n

    def xi(self) -> Tensor:
        if self.mean is None:
            raise RuntimeError("online xi has seen no clean losses yet")
        var = self.m2 / self.count if self.momentum is None else self.m2
        if self.rule == "mean":
            return self.mean.float()
        return (self.mean + 2 * var.clamp_min(0).sqrt()).float()

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "momentum": self.momentum, "count": self.count,
                "mean": None if self.mean is None else self.mean.tolist(),
                "m2": None if self.m2 is None else self.m2.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule, self.momentum, self.count = state["rule"], state["momentum"], int(state["count"])
        self.mean = None if state["mean"] is None else torch.tensor(state["mean"], dtype=torch.float64)
        self.m2 = None if state["m2"] is None else torch.tensor(state["m2"], dtype=torch.float64)


def check_xi_reachable(xi: Sequence[float], floors: Sequence[float | None] | None,
                       names: Sequence[str] | None = None, where: str = "xi") -> None:
    """Refuse an xi no sample can meet: eq. 2 accepts when every term is BELOW xi, so an xi
    at or below a term's least value (0 for CE, BCE, L1) would quietly turn AMAT into SAT at
    Delta. ``floors``: the adapter's ``term_floors`` (None entries: no bound known)."""
    for k, (v, f) in enumerate(zip(xi, floors or ())):
        if f is not None and float(v) <= f:
            name = names[k] if names is not None and k < len(names) else f"term {k}"
            raise ValueError(f"{where}: xi {float(v):g} for {name} is at or below {f:g}, the least value that term "
                             f"can take, so no sample would ever pass and AMAT would train as SAT at Delta; give an "
                             f"xi above it (amat calibrate <task> computes one from a clean model)")


def check_xi(xi: Any, n_terms: int | None = None) -> Tensor:
    """Validate a user/calibration xi: finite, 1-D, optionally with n_terms entries."""
    t = torch.as_tensor(xi, dtype=torch.float32).reshape(-1)
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"xi must be a non-empty list of finite thresholds, got {xi!r}")
    if n_terms is not None and t.numel() != n_terms:
        raise ValueError(f"xi has {t.numel()} thresholds but the loss has {n_terms} terms; "
                         f"recalibrate (amat calibrate) for this loss")
    if math.isnan(float(t.sum())):
        raise ValueError("xi contains NaN")
    return t
