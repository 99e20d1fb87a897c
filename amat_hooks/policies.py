"""STD, SAT and AMAT behind one interface (Algorithm 1 lines 2-12, section 2.3).

A trainer's adapter hands the policy a :class:`BoundLoss` for the current batch; the
policy runs the clean forward, the attack, the noisy forward, returns the loss to
back-propagate and (AMAT) updates the margins. Nothing here knows a trainer.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.adapter import BoundLoss
from amat_hooks.attacks import AttackResult, pgd
from amat_hooks.margins import MarginStore
from amat_hooks.policy_types import (ACCEPT_ITERATES, BOUNDARY_MODES, SAT_LOSSES, AttackSettings, SemanticsMismatchError, StepOutput)
from amat_hooks.thresholds import OnlineThreshold, accepted, check_xi

TermsFn = Callable[[Tensor], Tensor]


class Policy:
    """Common interface: ``step`` for trainers that own the loss, ``perturb`` +
    ``observe`` for those that only see batches (the monkeypatch runner)."""

    name = "base"

    def __init__(self, attack: AttackSettings | None = None) -> None:
        self.attack = attack or AttackSettings()
        self.nan_samples = 0

    # -- pieces -------------------------------------------------------------------------
    def eps_for(self, ids: Sequence[Hashable] | None, x: Tensor) -> Tensor | None:
        """Per-sample noise radius for this batch, or None (no attack)."""
        return None

    def boundary_for(self, x: Tensor, clean_terms: Tensor | None) -> Tensor | None:
        """Per-sample thresholds ``[B, K]`` where PGD must stop, or None (full radius)."""
        return None

    def perturb(self, model: nn.Module | None, x: Tensor, ids: Sequence[Hashable] | None,
                terms_fn: TermsFn, clean_terms: Tensor | None = None) -> AttackResult | None:
        eps = self.eps_for(ids, x)
        if eps is None:
            return None
        a = self.attack
        start = a.random_start and ("sphere" if a.start == "sphere" else True)
        return pgd(terms_fn, x, eps, steps=a.steps, step_size=a.step_size, alpha=a.alpha,
                   norm=a.norm, random_start=start, bounds=a.bounds, start_radius=self.start_radius(eps),
                   boundary=self.boundary_for(x, clean_terms), refine_steps=a.refine_steps,
                   model=model if a.bn == "frozen" else None, watch=self.watch())

    def start_radius(self, eps: Tensor) -> Tensor | None:
        """Radius of the ``sphere`` start (default: eps)."""
        return None

    def watch(self) -> Tensor | None:
        """Thresholds PGD tests at every iterate (AMAT with ``accept_iterates="all"``)."""
        return None

    @property
    def needs_clean_terms(self) -> bool:
        """Whether :meth:`perturb`/:meth:`observe` need the clean terms (hosts that own no
        clean forward, like the runner, then compute them without grad)."""
        return False

    @property
    def needs_clean_terms_before_attack(self) -> bool:
        """Whether :meth:`perturb` itself needs them (the boundary-stop variant stops PGD at xi
        and exempts samples already above it); otherwise the clean terms of the host's own
        clean forward, given to :meth:`observe`, are enough."""
        return False

    def observe_clean(self, clean_terms: Tensor) -> None:
        """Clean per-sample terms of a batch (AMAT's online xi)."""

    def observe(self, ids: Sequence[Hashable] | None, noisy_terms: Tensor,
                attack: AttackResult, clean_terms: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """After the noisy forward: returns (accepted [B], updated [B]) where relevant."""
        return None, None

    # -- one training step ----------------------------------------------------------------
    def step(self, model: nn.Module | None, x: Tensor, ids: Sequence[Hashable] | None,
             loss: BoundLoss) -> StepOutput:
        clean_loss, clean_terms = loss.training_loss(x, clean=True)
        clean_terms_d = clean_terms.detach()
        self.observe_clean(clean_terms_d)
        attack = self.perturb(model, x, ids, loss.terms, clean_terms=clean_terms_d)
        if attack is None:
            return StepOutput(loss=clean_loss, clean_loss=clean_loss, clean_terms=clean_terms_d)
        noisy_loss, noisy_terms = loss.training_loss(attack.x_adv, clean=False)
        noisy_terms_d = noisy_terms.detach()
        acc, upd = self.observe(ids, noisy_terms_d, attack, clean_terms_d)
        return StepOutput(loss=self.combine(clean_loss, noisy_loss), clean_loss=clean_loss,
                          clean_terms=clean_terms_d, noisy_loss=noisy_loss,
                          noisy_terms=noisy_terms_d, attack=attack, eps=self.last_eps,
                          accepted=acc, updated=upd)

    last_eps: Tensor | None = None

    def combine(self, clean_loss: Tensor, noisy_loss: Tensor) -> Tensor:
        """The loss back-propagated: Algorithm 1's ``(L0 + L1) / 2``."""
        return (clean_loss + noisy_loss) / 2

    # -- persistence / logging --------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        a = self.attack
        return {"mode": self.name, "steps": a.steps, "step_size": a.step_size, "alpha": a.alpha,
                "norm": a.norm, "random_start": a.random_start, "bounds": a.bounds, "start": a.start, "bn": a.bn,
                "refine_steps": a.refine_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config(), "nan_samples": self.nan_samples}

    def load_state_dict(self, state: dict[str, Any], force: bool = False) -> None:
        saved = state.get("config", {}).get("mode")
        if saved is not None and saved != self.name and not force:
            raise SemanticsMismatchError(
                f"the checkpoint was trained with --adv {saved}, this run uses --adv {self.name}; "
                f"resume with --adv {saved}")
        self.nan_samples = int(state.get("nan_samples", 0))

    def summary(self) -> dict[str, float]:
        return {"nan_samples": float(self.nan_samples)}

    def describe(self) -> str:
        """One line for logs: what this policy trains with."""
        return f"{self.name}, nan_samples={self.nan_samples}"


#: The recorded settings (policy config keys) whose change makes saved margins mean something
#: else; refine/update are checked by the margin table itself.
_PROTOCOL_FLAGS = {"accept_iterates": "--adv-accept-iterates", "start": "--adv-start", "bn": "--adv-attack-bn"}


class STD(Policy):
    """Standard training: clean loss only."""

    name = "none"


class SAT(Policy):
    """Standard adversarial training: one fixed eps for every sample, eq. (1)."""

    name = "sat"

    def __init__(self, eps: float, attack: AttackSettings | None = None, loss: str = "mean") -> None:
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"SAT needs a noise level eps > 0, got {eps!r}; pass e.g. --adv-eps 5")
        if loss not in SAT_LOSSES:
            raise ValueError(f"unknown SAT loss {loss!r}; choose one of {SAT_LOSSES}")
        super().__init__(attack)
        self.eps, self.loss = float(eps), loss

    def eps_for(self, ids, x):
        self.last_eps = torch.full((x.shape[0],), self.eps, device=x.device)
        return self.last_eps

    def combine(self, clean_loss, noisy_loss):
        """``mean``: eq. 1, ``(L0 + L1) / 2``; ``noisy``: the authors' nnU-Net SAT, L1 only."""
        return noisy_loss if self.loss == "noisy" else super().combine(clean_loss, noisy_loss)

    def config(self):
        return {**super().config(), "eps": self.eps, "sat_loss": self.loss}

    def describe(self) -> str:
        return f"SAT eps={self.eps:g} (L2), nan_samples={self.nan_samples}"


class AMAT(Policy):
    """Adaptive-margin adversarial training (Algorithm 1, multi-term condition eq. 2).

    ``xi``: thresholds ``[K]`` from a clean model (``amat calibrate``), or None to estimate
    them online from the clean losses with ``xi_rule``; ``xi_source`` says where given
    thresholds came from (a calibration file, the command line), for logs and checkpoints.
    ``boundary``: ``"none"`` (Algorithm 1: full-radius PGD) or ``"stop"`` (stop at xi and
    bisect; a sample whose CLEAN terms already fail xi keeps its margin and gets
    full-radius noise, as Algorithm 1 would give it).
    """

    name = "amat"

    def __init__(self, delta: float | None = None, xi: Sequence[float] | Tensor | None = None,
                 xi_rule: str = "mean", attack: AttackSettings | None = None, max_margin: float | None = None,
                 init: float | None = None, dataset_id: str | None = None,
                 xi_momentum: float | None = 0.01, boundary: str = "none",
                 xi_source: str | None = None, calibrate_hint: str = "amat calibrate <task>",
                 log: Callable[[str], None] | None = None, refine: str = "half", update: str = "visit",
                 accept_iterates: str = "last", initial: Mapping[Hashable, float] | None = None,
                 initial_digest: str | None = None) -> None:
        if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and math.isfinite(delta) and delta > 0):
            raise ValueError(f"AMAT needs a step size Delta > 0, got {delta!r}; pass e.g. --adv-step 0.5")
        if boundary not in BOUNDARY_MODES:
            raise ValueError(f"unknown --adv-boundary {boundary!r}; choose one of: {', '.join(BOUNDARY_MODES)}")
        if accept_iterates not in ACCEPT_ITERATES:
            raise ValueError(f"unknown --adv-accept-iterates {accept_iterates!r}; choose one of {ACCEPT_ITERATES}")
        super().__init__(attack)
        self.delta = float(delta)
        self.boundary_mode = boundary
        self.accept_iterates = accept_iterates
        self.margins = MarginStore(init=float(delta if init is None else init), delta=float(delta),
                                   max_margin=max_margin, dataset_id=dataset_id, refine=refine, update=update,
                                   initial=initial, initial_digest=initial_digest)
        self.xi_fixed = None if xi is None else check_xi(xi)
        self.online = None if xi is not None else OnlineThreshold(rule=xi_rule, momentum=xi_momentum)
        self.xi_rule = xi_rule
        if xi is None:
            self.xi_source = f"online estimate ({xi_rule} of this run's clean losses, EMA)"
        else:
            self.xi_source = xi_source or "given"
        self.calibrate_hint = calibrate_hint
        self.log = log or _log_stderr
        self._announced = False

    def xi(self) -> Tensor | None:
        if self.xi_fixed is not None:
            return self.xi_fixed
        return self.online.xi() if self.online is not None and self.online.ready else None

    @property
    def needs_clean_terms(self) -> bool:
        return self.online is not None or self.boundary_mode == "stop"

    def start_radius(self, eps: Tensor) -> Tensor:
        """The authors' start: on the sphere of radius max(E - Delta, Delta) (capped at E by pgd)."""
        return (eps - self.delta).clamp(min=self.delta)

    def watch(self) -> Tensor | None:
        return self.xi() if self.accept_iterates == "all" else None

    @property
    def needs_clean_terms_before_attack(self) -> bool:
        return self.boundary_mode == "stop"

    def _clean_outside(self, clean_terms: Tensor | None, xi: Tensor) -> Tensor | None:
        """Bool ``[B]``: samples whose clean terms already fail xi (eq. 2 on clean data)."""
        if clean_terms is None:
            return None
        ct = clean_terms if clean_terms.dim() == 2 else clean_terms.unsqueeze(1)
        return ~accepted(ct, xi.to(ct.device))

    def boundary_for(self, x, clean_terms):
        if self.boundary_mode != "stop":
            return None
        xi = self.xi()
        if xi is None:
            return None
        if clean_terms is None:
            raise ValueError("--adv-boundary stop needs the clean loss terms of the batch; the host "
                             "must pass clean_terms to AMAT.perturb")
        b = xi.to(x.device).reshape(1, -1).expand(x.shape[0], -1).clone()
        outside = self._clean_outside(clean_terms, xi).to(x.device)
        b[outside] = float("inf")  # already outside at x: full radius, as Algorithm 1
        return b

    def eps_for(self, ids, x):
        if ids is None:
            raise ValueError("AMAT needs sample ids for every batch (one margin per sample); "
                             "the adapter returned none - give the dataset an id per sample")
        if len(ids) != x.shape[0]:
            raise ValueError(f"got {len(ids)} sample ids for a batch of {x.shape[0]} inputs")
        self.last_eps = self.margins.get(ids, device=x.device)
        return self.last_eps

    def observe_clean(self, clean_terms):
        if self.online is not None:
            self.online.update(clean_terms)

    def _announce(self) -> None:
        self._announced = True
        if self.online is not None:
            self.log(f"amat-hooks: xi = {self.xi_source}; the paper takes xi from a trained clean "
                     f"model - run `{self.calibrate_hint}` first to use that")
        else:
            self.log(f"amat-hooks: xi = [{', '.join(f'{v:.4g}' for v in self.xi_fixed.tolist())}] "
                     f"from {self.xi_source}")

    def observe(self, ids, noisy_terms, attack, clean_terms=None):
        """Algorithm 1 lines 9-12 for a batch, with the noisy terms of the training forward."""
        xi = self.xi()
        if xi is None:
            raise RuntimeError("AMAT has no threshold xi yet (no clean losses observed)")
        if not self._announced:
            self._announce()
        nt = noisy_terms if noisy_terms.dim() == 2 else noisy_terms.unsqueeze(1)
        if xi.numel() != nt.shape[1]:
            raise ValueError(f"xi has {xi.numel()} thresholds but the loss has {nt.shape[1]} terms "
                             f"per sample; recalibrate xi for this loss ({self.calibrate_hint})")
        acc = accepted(nt, xi.to(nt.device))
        if self.accept_iterates == "all":  # the authors: every iterate PGD evaluated must pass too
            acc = acc & ~attack.failed_any.to(acc.device)
        acc = acc.cpu()
        valid = torch.isfinite(nt).all(dim=1).cpu() & attack.finite.cpu()
        if clean_terms is not None:
            valid &= torch.isfinite(clean_terms.reshape(clean_terms.shape[0], -1)).all(dim=1).cpu()
        bad = int((~valid).sum())
        if bad:
            self.nan_samples += bad
            warnings.warn(f"AMAT: {bad} sample(s) had NaN/inf loss terms; their margins were left "
                          f"unchanged ({self.nan_samples} so far)", RuntimeWarning, stacklevel=3)
        update = valid
        if self.boundary_mode == "stop":
            if clean_terms is None:
                raise ValueError("--adv-boundary stop needs the clean loss terms to update margins")
            update = valid & ~self._clean_outside(clean_terms, xi).cpu()  # keep E: no boundary inside
        keep = update.tolist()
        self.margins.update([i for i, k in zip(ids, keep) if k], acc[update],
                            attack.noise_norm.detach().cpu()[update])
        return acc, update

    def config(self):
        return {**super().config(), "delta": self.delta, "xi_rule": self.xi_rule,
                "xi": None if self.xi_fixed is None else self.xi_fixed.tolist(),
                "xi_source": self.xi_source, "max_margin": self.margins.max_margin,
                "boundary": self.boundary_mode, "accept_iterates": self.accept_iterates,
                "refine": self.margins.refine, "update": self.margins.update_mode}

    def state_dict(self):
        return {**super().state_dict(), "margins": self.margins.state_dict(),
                "online_xi": None if self.online is None else self.online.state_dict()}

    def load_state_dict(self, state, force=False):
        super().load_state_dict(state, force=force)
        if not isinstance(state.get("margins"), dict):
            raise SemanticsMismatchError("not an AMAT state: it holds no margin table (was it written by SAT or STD?)")
        saved = state.get("config", {}).get("boundary")
        if saved not in BOUNDARY_MODES:
            raise SemanticsMismatchError(f"the saved margins record no valid --adv-boundary ({saved!r}): not a state "
                                         f"this amat-hooks wrote; start a fresh run")
        if saved != self.boundary_mode and not force:
            raise SemanticsMismatchError(
                f"the checkpoint's margins were trained with --adv-boundary {saved} "
                f"({_BOUNDARY_TEXT[saved]}), this run uses --adv-boundary {self.boundary_mode} "
                f"({_BOUNDARY_TEXT[self.boundary_mode]}); resume with --adv-boundary {saved}, or "
                f"continue under the new semantics with --adv-force-resume")
        mine = self.config()
        differ = [f"{flag} {saved_cfg[k]} != {mine[k]}" for k, flag in _PROTOCOL_FLAGS.items()
                  if k in (saved_cfg := state.get("config", {})) and saved_cfg[k] != mine.get(k)]
        if differ and not force:
            raise SemanticsMismatchError(
                f"the checkpoint's margins were trained under other protocol settings ({'; '.join(differ)}); "
                f"resume with the same --adv-protocol (and --adv-* settings), or continue anyway with "
                f"--adv-force-resume")
        self.margins.load_state_dict(state["margins"], force=force)
        if self.online is not None and state.get("online_xi"):
            self.online.load_state_dict(state["online_xi"])
        self._announced = False

    def summary(self):
        s = {f"margin_{k}": float(v) for k, v in self.margins.summary().items()}
        xi = self.xi()
        if xi is not None:
            for k, v in enumerate(xi.tolist()):
                s[f"xi_{k}"] = v
        return {**super().summary(), **s}

    def describe(self) -> str:
        xi = self.xi()
        xs = "n/a" if xi is None else "[" + ", ".join(f"{v:.4g}" for v in xi.tolist()) + "]"
        return (f"{self.margins.format_summary()}, xi={xs} from {self.xi_source}, "
                f"boundary={self.boundary_mode}, nan_samples={self.nan_samples}")


_BOUNDARY_TEXT = {"none": "Algorithm 1, full-radius PGD", "stop": "stop at the loss boundary"}


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
