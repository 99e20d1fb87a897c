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
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence

from amat_hooks.policies import AMAT, SAT, STD, Policy
from amat_hooks.policy_types import BOUNDARY_MODES, MODES, TRAIN_REFINE_STEPS, AttackSettings
from amat_hooks.protocols import CHOICES, PROTOCOLS, XI_PRESETS, protocol_settings
from amat_hooks.thresholds import check_rule

_ALIASES = {"std": "none", "off": "none", "clean": "none"}


class AdvConfigError(ValueError):
    """Bad adversarial-training settings; the message names the flag and the fix."""


#: The environment variable of each field (nnU-Net's front end, DDP re-creation).
ENV_NAMES = {"mode": "AMAT_MODE", "delta": "AMAT_STEP", "eps": "AMAT_EPS", "pgd_steps": "AMAT_STEPS",
             "pgd_step_size": "AMAT_STEP_SIZE", "alpha": "AMAT_ALPHA", "norm": "AMAT_NORM", "xi": "AMAT_XI",
             "xi_rule": "AMAT_XI_RULE", "xi_momentum": "AMAT_XI_MOMENTUM", "boundary": "AMAT_BOUNDARY",
             "refine_steps": "AMAT_REFINE_STEPS", "max_margin": "AMAT_MAX_MARGIN", "protocol": "AMAT_PROTOCOL",
             "start": "AMAT_START", "accept_iterates": "AMAT_ACCEPT_ITERATES", "update": "AMAT_UPDATE",
             "refine": "AMAT_REFINE", "max_margin_deltas": "AMAT_MAX_MARGIN_DELTAS", "sat_loss": "AMAT_SAT_LOSS",
             "clamp": "AMAT_CLAMP", "attack_bn": "AMAT_ATTACK_BN", "terms": "AMAT_TERMS",
             "margin_init": "AMAT_MARGIN_INIT"}


@dataclass
class AdvConfig:
    """Adversarial-training settings. ``delta`` is AMAT's step Delta (flag ``--adv-step``),
    ``pgd_steps`` the PGD iterations (``--adv-steps``), ``pgd_step_size`` an absolute PGD
    step (``--adv-step-size``). Settings left at None are the ``protocol``'s
    (:mod:`amat_hooks.protocols`), filled in by :meth:`resolved` for a kind of trainer."""

    mode: str = "amat"
    delta: float | None = None         # AMAT expansion step Delta (= initial margin)
    eps: float | None = None           # SAT noise level
    pgd_steps: int | None = None       # PGD iterations for training noise (paper 10, authors 20)
    pgd_step_size: float | None = None  # absolute PGD step; default alpha * eps / pgd_steps
    norm: str = "l2"
    xi: list[float] | None = None      # thresholds; None = online estimate
    xi_rule: str = "mean"              # mean | mean+2std
    xi_momentum: float | None = 0.01
    refine_steps: int = TRAIN_REFINE_STEPS  # bisection steps at the loss boundary (boundary=stop)
    max_margin: float | None = None
    bounds: tuple[float, float] | None = None
    boundary: str = "none"             # none: Algorithm 1 (full radius) | stop: stop at xi, bisect
    alpha: float | None = None         # PGD step = alpha * eps / steps (unless step_size)
    xi_source: str | None = None       # where given xi came from (file path, flag, variable)
    protocol: str = "paper"            # paper | authors: the defaults of the settings below
    start: str | None = None
    accept_iterates: str | None = None
    update: str | None = None
    refine: str | None = None
    max_margin_deltas: float | None = None
    sat_loss: str | None = None
    clamp: str | None = None
    attack_bn: str | None = None
    terms: str | None = None
    kind: str | None = None            # the trainer kind the protocol was resolved for
    margin_init: str | None = None     # initial-margin file (amat calibrate --margins-out); None: E starts at Delta

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
        if self.protocol not in PROTOCOLS:
            raise AdvConfigError(f"unknown --adv-protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if choices and value is not None and value not in choices:
                raise AdvConfigError(f"unknown --adv-{name.replace('_', '-')} {value!r}; choose one of: "
                                     f"{', '.join(choices)}")
        _number("--adv-max-margin-deltas", self.max_margin_deltas, "> 0, the cap is this many Delta")
        if self.margin_init is not None:
            if self.mode != "amat":
                raise AdvConfigError(f"--adv-margin-init is for --adv amat (margins), not --adv {self.mode}; "
                                     f"leave it out")
            self.initial_margins()  # the file read and checked now, before any training
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
        try:
            check_rule(self.xi_rule)
        except ValueError as e:
            raise AdvConfigError(f"--adv-xi-rule: {e}") from None
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

    def resolved(self, kind: str | None = None) -> "AdvConfig":
        """These settings with every one left at None taken from the protocol for a trainer of
        ``kind`` (default: the kind resolved before, else ``generic``); explicit ones win."""
        kind = kind or self.kind or "generic"
        if self.protocol not in PROTOCOLS:
            raise AdvConfigError(f"unknown --adv-protocol {self.protocol!r} (AMAT_PROTOCOL); choose one of: "
                                 f"{', '.join(PROTOCOLS)}")
        fill = {k: v for k, v in protocol_settings(self.protocol, kind).items() if getattr(self, k) is None}
        cfg = replace(self, **fill, kind=kind)
        if cfg.max_margin is None and cfg.max_margin_deltas and cfg.delta:
            cfg.max_margin = cfg.max_margin_deltas * cfg.delta
        return cfg.validate()

    def with_xi_preset(self, dataset: str | None = None) -> "AdvConfig":
        """The authors' published xi for this (resolved) kind where the authors' terms are used
        and no xi was given (the preset's source is recorded as the xi source)."""
        from amat_hooks.protocols import XI_PRESETS, xi_preset

        name = xi_preset(self.kind or "generic", dataset)
        if self.mode != "amat" or self.terms != "authors" or self.xi is not None or name is None:
            return self
        values, source = XI_PRESETS[name]
        return replace(self, xi=list(values), xi_source=f"preset {name} ({source})")

    def initial_margins(self) -> Any:
        """The ``--adv-margin-init`` file, read once (:class:`~amat_hooks.initial_margins.InitialMargins`)."""
        from amat_hooks.initial_margins import InitialMarginsError, read_initial_margins

        if self.margin_init is None:
            return None
        cached = getattr(self, "_initial", None)
        if cached is not None and str(cached.path) == str(self.margin_init):
            return cached
        try:
            found = read_initial_margins(self.margin_init)
        except InitialMarginsError as e:
            raise AdvConfigError(f"--adv-margin-init: {e}") from None
        object.__setattr__(self, "_initial", found)
        return found

    def attack_settings(self) -> AttackSettings:
        c = self if self.kind is not None else self.resolved()
        return AttackSettings(steps=c.pgd_steps, step_size=c.pgd_step_size, norm=c.norm, bounds=c.bounds,
                              refine_steps=c.refine_steps, alpha=float(c.alpha), start=c.start, bn=c.attack_bn)

    def build_policy(self, dataset_id: str | None = None, calibrate_hint: str | None = None,
                     log: Callable[[str], None] | None = None, kind: str | None = None) -> Policy:
        """The policy these settings describe for a trainer of ``kind`` (the protocol's column).
        ``calibrate_hint`` names the command that computes xi for this trainer (printed when xi
        falls back to the online estimate)."""
        c = self.resolved(kind)
        if c.mode == "none":
            return STD(c.attack_settings())
        if c.mode == "sat":
            return SAT(c.eps, c.attack_settings(), loss=c.sat_loss)
        init = c.initial_margins()
        if init is not None and log is not None:
            log(init.describe())
        return AMAT(c.delta, xi=c.xi, xi_rule=c.xi_rule, attack=c.attack_settings(),
                    max_margin=c.max_margin, dataset_id=dataset_id, xi_momentum=c.xi_momentum,
                    boundary=c.boundary, xi_source=c.xi_source,
                    calibrate_hint=calibrate_hint or "amat calibrate <task>", log=log, refine=c.refine,
                    update=c.update, accept_iterates=c.accept_iterates,
                    **({} if init is None else {"initial": init.values, "initial_digest": init.digest}))

    @property
    def label(self) -> str:
        """Paper-style method name: STD, SAT5, AMAT."""
        if self.mode == "none":
            return "STD"
        tail = "-authors" if self.protocol == "authors" else ""
        if self.mode == "sat":
            return f"SAT{self.eps:g}{tail}"
        init = "-init" if self.margin_init is not None else ""  # margins started from a radius file
        return ("AMAT" if self.boundary == "none" else "AMAT-stop") + init + tail

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
        g.add_argument("--adv-protocol", default="paper", choices=PROTOCOLS,
                       help="paper (default): the paper's text; authors: the settings of the authors' released "
                            "code for this trainer (docs/protocols.md); any --adv-* setting given still wins")
        g.add_argument("--adv-steps", type=int, default=None, help="PGD iterations for training noise (paper 10, "
                                                                   "authors 20)")
        g.add_argument("--adv-alpha", type=float, default=None,
                       help="PGD step = alpha * eps / steps (paper 2.5; authors 4 for nnU-Net, 5 for YOLO, landmarks)")
        g.add_argument("--adv-step-size", type=float, help="absolute PGD step (overrides --adv-alpha)")
        g.add_argument("--adv-norm", default="l2", choices=["l2", "linf"])
        g.add_argument("--adv-xi", type=_float_list,
                       help="thresholds xi, comma-separated, or an authors' preset (" + ", ".join(sorted(XI_PRESETS))
                            + "; docs/protocols.md); default: a calibration file where the trainer has one, else the "
                              "online estimate")
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
        g.add_argument("--adv-margin-init", default=None, metavar="FILE",
                       help="start each margin at the clean model's radius from `amat calibrate <task> --margins-out "
                            "FILE` (floored at Delta) instead of at Delta")
        g.add_argument("--adv-xi-momentum", type=float, default=0.01,
                       help="online xi only (no --adv-xi/--adv-xi-file): EMA momentum of the clean-loss statistics")
        p = parser.add_argument_group("protocol settings (default: the --adv-protocol's; docs/protocols.md)")
        for name, choices in CHOICES.items():
            if choices:
                p.add_argument(f"--adv-{name.replace('_', '-')}", dest=f"adv_{name}", default=None, choices=choices)
        p.add_argument("--adv-max-margin-deltas", type=float, default=None, help="cap margins at this many Delta")
        g.add_argument("--adv-force-resume", action="store_true",
                       help="resume a margin table trained with other settings (another Delta, "
                            "dataset or --adv-boundary)")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "AdvConfig":
        mode = ns.adv_mode
        if mode is None:
            mode = "none"
        xi, rule = ns.adv_xi, ns.adv_xi_rule
        source = getattr(xi, "source", None) or ("command line --adv-xi" if xi is not None else None)
        xi_file = getattr(ns, "adv_xi_file", None)
        if xi_file:
            if xi is not None:
                raise AdvConfigError("--adv-xi and --adv-xi-file both given; keep one of them")
            xi, source, rule = read_xi_thresholds(xi_file, rule)
        cfg = cls(mode=mode, delta=ns.adv_step, eps=ns.adv_eps, pgd_steps=ns.adv_steps,
                  pgd_step_size=ns.adv_step_size, norm=ns.adv_norm, xi=xi,
                  xi_rule=rule or "mean", refine_steps=ns.adv_refine_steps,
                  max_margin=ns.adv_max_margin, boundary=ns.adv_boundary, alpha=ns.adv_alpha,
                  xi_momentum=getattr(ns, "adv_xi_momentum", 0.01), xi_source=source,
                  protocol=getattr(ns, "adv_protocol", "paper"), margin_init=getattr(ns, "adv_margin_init", None),
                  **{k: getattr(ns, f"adv_{k}", None) for k in CHOICES if k not in ("pgd_steps", "alpha")})
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
                "boundary": str.lower, "max_margin_deltas": float}
        for name, var in ENV_NAMES.items():
            key = prefix + var[len("AMAT_"):]
            if key in env and env[key] != "":
                raw = env[key]
                try:
                    d[name] = conv.get(name, str)(raw)
                except (ValueError, argparse.ArgumentTypeError) as e:
                    raise AdvConfigError(f"environment variable {key}={raw!r} is not valid: {e}") from None
        if d.get("xi") is not None and f"{prefix}XI" in env:
            d["xi_source"] = f"environment {prefix}XI" + (f": {d['xi'].source}" if getattr(d["xi"], "source", "") else "")
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


class XiPreset(list):
    """The values of a named preset (``--adv-xi authors:yolov5``), carrying where they come from."""

    source: str = ""


def _float_list(text: str | Sequence[float]) -> list[float]:
    """Comma-separated numbers, or the name of one of the authors' presets (:data:`XI_PRESETS`)."""
    if not isinstance(text, str):
        return [float(v) for v in text]
    if text.strip().lower() in XI_PRESETS:
        values, where = XI_PRESETS[text.strip().lower()]
        out = XiPreset(values)
        out.source = f"preset {text.strip().lower()} ({where})"
        return out
    if text.strip().lower().startswith("authors:"):
        raise argparse.ArgumentTypeError(f"unknown xi preset {text.strip()!r}; the presets are "
                                         f"{', '.join(sorted(XI_PRESETS))}")
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
