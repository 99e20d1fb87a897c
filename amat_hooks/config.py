"""One set of adversarial-training settings for every front end.

The same names appear as command-line flags (``--adv amat --adv-step 0.5``), as
environment variables (``AMAT_MODE=amat AMAT_STEP=0.5``, for trainers whose command line
we do not own, like ``nnUNetv2_train``) and as a JSON/dict (sidecars, checkpoints).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Sequence

from amat_hooks.attacks import DEFAULT_ALPHA
from amat_hooks.policies import AMAT, BOUNDARY_MODES, MODES, SAT, STD, TRAIN_REFINE_STEPS, AttackSettings, Policy
from amat_hooks.thresholds import RULES

_ALIASES = {"std": "none", "off": "none", "clean": "none"}


class AdvConfigError(ValueError):
    """Bad adversarial-training settings; the message names the flag and the fix."""


#: The environment variable of each field (nnU-Net's front end, DDP re-creation).
ENV_NAMES = {"mode": "AMAT_MODE", "delta": "AMAT_STEP", "eps": "AMAT_EPS", "pgd_steps": "AMAT_STEPS",
             "pgd_step_size": "AMAT_STEP_SIZE", "alpha": "AMAT_ALPHA", "norm": "AMAT_NORM", "xi": "AMAT_XI",
             "xi_rule": "AMAT_XI_RULE", "xi_momentum": "AMAT_XI_MOMENTUM", "boundary": "AMAT_BOUNDARY",
             "refine_steps": "AMAT_REFINE_STEPS", "max_margin": "AMAT_MAX_MARGIN"}


@dataclass
class AdvConfig:
    """Adversarial-training settings. ``delta`` is AMAT's step Delta (flag ``--adv-step``),
    ``pgd_steps`` the PGD iterations (``--adv-steps``), ``pgd_step_size`` an absolute PGD
    step (``--adv-step-size``)."""

    mode: str = "amat"
    delta: float | None = None         # AMAT expansion step Delta (= initial margin)
    eps: float | None = None           # SAT noise level
    pgd_steps: int = 10                # PGD iterations for training noise
    pgd_step_size: float | None = None  # absolute PGD step; default alpha * eps / pgd_steps
    norm: str = "l2"
    xi: list[float] | None = None      # thresholds; None = online estimate
    xi_rule: str = "mean"              # mean | mean+2std
    xi_momentum: float | None = 0.01
    refine_steps: int = TRAIN_REFINE_STEPS  # bisection steps at the loss boundary (boundary=stop)
    max_margin: float | None = None
    bounds: tuple[float, float] | None = None
    boundary: str = "none"             # none: Algorithm 1 (full radius) | stop: stop at xi, bisect
    alpha: float = DEFAULT_ALPHA       # PGD step = alpha * eps / steps (unless step_size)
    xi_source: str | None = None       # where given xi came from (file path, flag, variable)

    def __post_init__(self) -> None:
        self.mode = _ALIASES.get(str(self.mode).lower(), str(self.mode).lower())
        if isinstance(self.bounds, list):
            self.bounds = tuple(self.bounds)

    def validate(self) -> "AdvConfig":
        """Every value checked before any training starts; each problem is one
        :class:`AdvConfigError` naming the flag, the value and the fix."""
        if self.mode not in MODES:
            raise AdvConfigError(f"unknown mode {self.mode!r} for --adv; choose one of: {', '.join(MODES)} "
                                 f"(std is an alias of none)")
        if self.mode == "sat" and self.eps is None:
            raise AdvConfigError("--adv sat needs a noise level: add --adv-eps EPS (e.g. --adv-eps 5)")
        if self.mode == "amat" and self.delta is None:
            raise AdvConfigError("--adv amat needs a step size: add --adv-step DELTA (e.g. --adv-step 0.5)")
        _number("--adv-step", self.delta, "> 0, e.g. --adv-step 0.5")
        _number("--adv-eps", self.eps, "> 0, e.g. --adv-eps 5")
        _number("--adv-steps", self.pgd_steps, ">= 1", integer=True, least=1)
        _number("--adv-step-size", self.pgd_step_size, "> 0, or leave it out (the step is then alpha * eps / steps)")
        _number("--adv-alpha", self.alpha, "> 0, the PGD step is alpha * eps / steps")
        _number("--adv-refine-steps", self.refine_steps, ">= 0", integer=True, least=0)
        _number("--adv-max-margin", self.max_margin, "> 0, or leave it out (no cap)")
        if self.max_margin is not None and self.delta is not None and self.max_margin < self.delta:
            raise AdvConfigError(f"--adv-max-margin {self.max_margin:g} is below the initial margin --adv-step "
                                 f"{self.delta:g}; raise it or leave it out")
        if self.xi_momentum is not None and not (_is_number(self.xi_momentum) and 0 < self.xi_momentum <= 1):
            raise AdvConfigError(f"--adv-xi-momentum must be in (0, 1], got {self.xi_momentum!r}")
        if self.xi is not None:
            xi = self.xi if isinstance(self.xi, (list, tuple)) else [self.xi]
            if not xi or not all(_is_number(v) and math.isfinite(v) for v in xi):
                raise AdvConfigError(f"--adv-xi must be finite numbers, one per loss term, got {self.xi!r}")
            self.xi = [float(v) for v in xi]
        if self.xi_rule not in RULES:
            raise AdvConfigError(f"unknown --adv-xi-rule {self.xi_rule!r}; choose one of: {', '.join(RULES)}")
        if self.norm not in ("l2", "linf"):
            raise AdvConfigError(f"unknown --adv-norm {self.norm!r}; choose l2 or linf")
        if self.boundary not in BOUNDARY_MODES:
            raise AdvConfigError(f"unknown --adv-boundary {self.boundary!r}; choose one of: "
                                 f"{', '.join(BOUNDARY_MODES)} (none = Algorithm 1, full-radius PGD; "
                                 f"stop = stop at the loss boundary)")
        if self.bounds is not None and not (len(self.bounds) == 2 and all(map(_is_number, self.bounds))
                                            and self.bounds[0] < self.bounds[1]):
            raise AdvConfigError(f"input bounds must be (low, high) with low < high, got {self.bounds!r}")
        return self

    def attack_settings(self) -> AttackSettings:
        return AttackSettings(steps=self.pgd_steps, step_size=self.pgd_step_size, norm=self.norm,
                              bounds=self.bounds, refine_steps=self.refine_steps, alpha=float(self.alpha))

    def build_policy(self, dataset_id: str | None = None, calibrate_hint: str | None = None,
                     log: Callable[[str], None] | None = None) -> Policy:
        """The policy these settings describe. ``calibrate_hint`` names the command that
        computes xi for this trainer (printed when xi falls back to the online estimate)."""
        self.validate()
        if self.mode == "none":
            return STD(self.attack_settings())
        if self.mode == "sat":
            return SAT(self.eps, self.attack_settings())
        return AMAT(self.delta, xi=self.xi, xi_rule=self.xi_rule, attack=self.attack_settings(),
                    max_margin=self.max_margin, dataset_id=dataset_id, xi_momentum=self.xi_momentum,
                    boundary=self.boundary, xi_source=self.xi_source,
                    calibrate_hint=calibrate_hint or "amat calibrate <task>", log=log)

    @property
    def label(self) -> str:
        """Paper-style method name: STD, SAT5, AMAT."""
        if self.mode == "none":
            return "STD"
        if self.mode == "sat":
            return f"SAT{self.eps:g}"
        return "AMAT" if self.boundary == "none" else "AMAT-stop"

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bounds"] = None if self.bounds is None else list(self.bounds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdvConfig":
        """From :meth:`to_dict` output."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise AdvConfigError(f"unknown adversarial setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    # -- command line ------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, default_mode: str | None = "amat") -> None:
        g = parser.add_argument_group("adversarial training (amat-hooks)")
        g.add_argument("--adv", dest="adv_mode", default=default_mode, type=str.lower,
                       help=f"training mode: {', '.join(MODES)} (std is an alias of none)")
        g.add_argument("--adv-step", type=float, help="AMAT expansion step Delta (also the initial margin)")
        g.add_argument("--adv-eps", type=float, help="SAT noise level (L2)")
        g.add_argument("--adv-steps", type=int, default=10, help="PGD iterations for training noise (default 10)")
        g.add_argument("--adv-alpha", type=float, default=DEFAULT_ALPHA,
                       help=f"PGD step = alpha * eps / steps (default {DEFAULT_ALPHA:g}; the authors' code: "
                            f"4 for nnU-Net, 5 for YOLO and landmarks, with 20 steps)")
        g.add_argument("--adv-step-size", type=float, help="absolute PGD step (overrides --adv-alpha)")
        g.add_argument("--adv-norm", default="l2", choices=["l2", "linf"])
        g.add_argument("--adv-xi", type=_float_list, help="thresholds xi, comma-separated (default: online estimate)")
        g.add_argument("--adv-xi-file", default=None, metavar="FILE",
                       help="xi from `amat calibrate <task>` (the --adv-xi-rule thresholds of that file)")
        g.add_argument("--adv-xi-rule", default=None,
                       help="xi rule: mean or mean+2std (default: the xi file's own rule, else mean)")
        g.add_argument("--adv-boundary", default="none", type=str.lower,
                       help="AMAT training noise: none = Algorithm 1, full-radius PGD (default); stop = "
                            "stop each sample at its loss boundary xi and bisect there (variant)")
        g.add_argument("--adv-refine-steps", type=int, default=TRAIN_REFINE_STEPS,
                       help=f"--adv-boundary stop: bisection steps at the boundary (default {TRAIN_REFINE_STEPS})")
        g.add_argument("--adv-max-margin", type=float, help="cap on AMAT margins")
        g.add_argument("--adv-xi-momentum", type=float, default=0.01,
                       help="online xi only (no --adv-xi/--adv-xi-file): EMA momentum of the clean-loss statistics")
        g.add_argument("--adv-force-resume", action="store_true",
                       help="resume a margin table trained with other settings (another Delta, "
                            "dataset or --adv-boundary)")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "AdvConfig":
        mode = ns.adv_mode
        if mode is None:
            mode = "none"
        xi, source, rule = ns.adv_xi, "command line --adv-xi" if ns.adv_xi is not None else None, ns.adv_xi_rule
        xi_file = getattr(ns, "adv_xi_file", None)
        if xi_file:
            if xi is not None:
                raise AdvConfigError("--adv-xi and --adv-xi-file both given; keep one of them")
            xi, source, rule = read_xi_thresholds(xi_file, rule)
        cfg = cls(mode=mode, delta=ns.adv_step, eps=ns.adv_eps, pgd_steps=ns.adv_steps,
                  pgd_step_size=ns.adv_step_size, norm=ns.adv_norm, xi=xi,
                  xi_rule=rule or "mean", refine_steps=ns.adv_refine_steps,
                  max_margin=ns.adv_max_margin, boundary=ns.adv_boundary, alpha=ns.adv_alpha,
                  xi_momentum=getattr(ns, "adv_xi_momentum", 0.01),
                  xi_source=source)
        return cfg.validate()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, prefix: str = "AMAT_",
                 defaults: Mapping[str, Any] | None = None) -> "AdvConfig":
        """Read ``AMAT_MODE, AMAT_STEP, AMAT_EPS, AMAT_STEPS, AMAT_STEP_SIZE, AMAT_ALPHA,
        AMAT_NORM, AMAT_XI, AMAT_XI_RULE, AMAT_BOUNDARY, AMAT_REFINE_STEPS, AMAT_MAX_MARGIN``
        over ``defaults``."""
        env = os.environ if env is None else env
        d: dict[str, Any] = dict(defaults or {})
        conv = {"delta": float, "eps": float, "pgd_steps": int, "pgd_step_size": float, "xi": _float_list,
                "refine_steps": int, "max_margin": float, "xi_momentum": float, "alpha": float,
                "boundary": str.lower}
        for name, var in ENV_NAMES.items():
            key = prefix + var[len("AMAT_"):]
            if key in env and env[key] != "":
                raw = env[key]
                try:
                    d[name] = conv.get(name, str)(raw)
                except (ValueError, argparse.ArgumentTypeError) as e:
                    raise AdvConfigError(f"environment variable {key}={raw!r} is not valid: {e}") from None
        if d.get("xi") is not None and f"{prefix}XI" in env:
            d["xi_source"] = f"environment {prefix}XI"
        return cls.from_dict(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(flag: str, value: Any, rule: str, integer: bool = False, least: float | None = None) -> None:
    """Refuse a value that is not a finite number (an integer where asked) obeying ``rule``
    (``"> 0, e.g. --adv-eps 5"``: the bound, then the hint)."""
    if value is None:
        return
    ok = _is_number(value) and math.isfinite(value) and (not integer or float(value).is_integer())
    if ok:
        ok = value >= least if least is not None else value > 0
    if not ok:
        bound, _, hint = rule.partition(", ")
        kind = "an integer " if integer else ("" if _is_number(value) and math.isfinite(value) else "a finite number ")
        raise AdvConfigError(f"{flag} must be {kind}{bound}, got {value!r}" + (f"; {hint}" if hint else ""))


def _float_list(text: str | Sequence[float]) -> list[float]:
    if not isinstance(text, str):
        return [float(v) for v in text]
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


#: Flags whose environment variable is not simply ``AMAT_`` + the upper-cased name.
_FLAG_ENV = {"--adv": "AMAT_MODE", "--adv-force-resume": "AMAT_FORCE_RESUME=1"}


def env_wording(message: str, prefix: str = "AMAT_") -> str:
    """The same message for a front end configured by environment variables (nnU-Net):
    ``--adv-step`` becomes ``AMAT_STEP``, ``--adv sat`` becomes ``AMAT_MODE=sat``."""
    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        env = _FLAG_ENV.get(name) or prefix + name[len("--adv-"):].replace("-", "_").upper()
        if value and "=" not in env:
            return f"{env}={value.strip()}"
        return env + (value or "")
    value = r"(\s+(?:\d[\w.]*|[A-Z][A-Z_]*\b|none\b|sat\b|amat\b|stop\b|mean\+2std|mean\b))"
    return re.sub(r"(--adv(?:-[a-z0-9]+)*)" + value + "?", flag, message)


def read_xi_thresholds(path: str, rule: str | None, n_terms: int | None = None,
                       fix: str = "write it with `amat calibrate <task>`") -> tuple[list[float], str, str]:
    """(xi, source description, rule) from an xi file (``--adv-xi-file`` / ``AMAT_XI_FILE``)."""
    from amat_hooks.state import XiFileError, read_xi_file

    try:
        xf = read_xi_file(path, fix=fix)
        rule = rule or xf.rule or "mean"
        return xf.thresholds(rule, n_terms, fix=fix), xf.description, rule
    except XiFileError as e:
        raise AdvConfigError(str(e)) from None


def force_resume_requested(env: Mapping[str, str] | None = None) -> bool:
    """``AMAT_FORCE_RESUME=1``: the environment form of ``--adv-force-resume``."""
    env = os.environ if env is None else env
    return env.get("AMAT_FORCE_RESUME", "").strip().lower() in ("1", "true", "yes", "on")
