"""The result of one evaluation: :class:`EvalResult` (per attack, level and sample)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from amat_hooks.evaluation.metrics import auc_robust

#: a sample is broken below this share of its clean score (the radius run's default)
DEFAULT_RADIUS_THRESHOLD = 0.5


@dataclass
class EvalResult:
    """Metric values: ``clean[metric]``, ``noisy[attack][level][metric]`` (``worst`` is an
    attack here), ``random[level][metric]`` (random noise of norm = level), ``radius`` (the
    radius run), ``per_sample`` (every sample's statistics and scores, see
    :func:`robustness_eval`). Results written before these existed read with them empty."""

    task: str
    metric: str
    higher_is_better: bool
    levels: list[float]
    clean: dict[str, float]
    noisy: dict[str, dict[float, dict[str, float]]]
    batches: int
    seconds: float
    steps: dict[str, int] = field(default_factory=dict)  # attack -> iterations used
    fingerprint: str = ""  # what was evaluated how (task, levels, attacks, steps, seed)
    samples: int = 0       # rows scored (slices, images)
    scored: str = ""       # what they were, in words ("412 slices of 8 cases")
    random: dict[float, dict[str, float]] = field(default_factory=dict)
    floor: float | None = None
    worst_of: list[str] = field(default_factory=list)      # the attacks ``worst`` is taken over
    radius: dict[str, Any] | None = None
    per_sample: dict[str, Any] = field(default_factory=dict)
    #: the evaluation protocol's settings (``amat eval --protocol``; rows 12-14 of docs/protocols.md)
    protocol: dict[str, Any] = field(default_factory=lambda: {"protocol": "paper"})
    floor_from: str = ""   # the trivial prediction that scores ``floor`` ("" = the metric's own floor)
    #: the task's attacks aimed at its metric that ran: name -> {"about": words, "short": column prefix}
    objectives: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def attacks(self) -> list[str]:
        return list(self.noisy)

    def curve(self, attack: str, metric: str | None = None) -> list[float]:
        m = metric or self.metric
        return [self.noisy[attack][lv][m] for lv in self.levels]

    def average(self, attack: str, metric: str | None = None) -> float:
        c = self.curve(attack, metric)
        return sum(c) / len(c)

    def auc_robust(self, attack: str = "pgd", metric: str | None = None) -> float:
        """eq. 4 with the paper's normalised trapezoid AUC over [0, max level] (see
        :func:`amat_hooks.evaluation.metrics.auc_robust`); lower-is-better for MRE."""
        m = metric or self.metric
        return auc_robust(self.clean[m], self.curve(attack, m), self.levels)

    # -- per sample -------------------------------------------------------------------------
    def sample_scores(self, attack: str, level: float) -> list[float]:
        """Per-sample primary metric under ``attack`` (``clean``, ``random`` or an attack) at ``level``."""
        ps = self.per_sample.get("scores") or {}
        if not ps:
            raise ValueError("this result has no per-sample scores (evaluated before they were kept)")
        if attack == "clean":
            return list(ps["clean"])
        return list(ps[attack][_lv_key(level)])

    def broken(self, scores: Sequence[float], clean: Sequence[float], threshold: float,
               relative: bool = True) -> list[bool]:
        """Whether each sample's score is below the threshold (see :class:`RadiusSpec`)."""
        return [bool(b) for b in _broken(torch.tensor(list(scores), dtype=torch.float64),
                                         torch.tensor(list(clean), dtype=torch.float64),
                                         threshold, relative, self.higher_is_better, self.floor)]

    def unbroken_fraction(self, attack: str, threshold: float | None = None, relative: bool | None = None) -> list[float]:
        """Share of samples NOT broken under ``attack`` at each level (the per-level
        counterpart of :meth:`radius_curve`); threshold defaults to the radius run's."""
        thr, rel = self._threshold(threshold, relative)
        clean = self.sample_scores("clean", 0.0)
        out = []
        for lv in self.levels:
            b = self.broken(self.sample_scores(attack, lv), clean, thr, rel)
            out.append(1.0 - sum(b) / len(b))
        return out

    def _threshold(self, threshold, relative) -> tuple[float, bool]:
        r = self.radius or {}
        thr = threshold if threshold is not None else r.get("threshold", DEFAULT_RADIUS_THRESHOLD)
        rel = relative if relative is not None else r.get("relative", True)
        return float(thr), bool(rel)

    # -- radius -----------------------------------------------------------------------------
    def radii(self) -> list[float]:
        """Each sample's robust radius (min over the radius objectives; ``inf`` = not broken
        within the radius run's maximum)."""
        if not self.radius:
            raise ValueError("this result has no radius run (evaluate with --radius)")
        return [math.inf if v is None else float(v) for v in self.radius["radius"]]

    def radius_curve(self, levels: Sequence[float] | None = None) -> list[float]:
        """Share of samples whose radius is above each level (robust at that level)."""
        r = self.radii()
        return [sum(v > lv for v in r) / len(r) for lv in (self.levels if levels is None else levels)]

    def radius_auc(self) -> float:
        """AUC_robust (eq. 4) of the radius curve: the share robust at 0 and at each level."""
        return auc_robust(self.radius_curve([0.0])[0], self.radius_curve(), self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "levels": self.levels, "clean": self.clean, "batches": self.batches,
                "seconds": self.seconds, "steps": self.steps, "fingerprint": self.fingerprint,
                "samples": self.samples, "scored": self.scored,
                "noisy": {a: {str(lv): v for lv, v in d.items()} for a, d in self.noisy.items()},
                "random": {str(lv): v for lv, v in self.random.items()}, "floor": self.floor,
                "worst_of": self.worst_of, "radius": self.radius, "per_sample": self.per_sample,
                "protocol": self.protocol, "floor_from": self.floor_from, "objectives": self.objectives}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        return cls(task=d["task"], metric=d["metric"], higher_is_better=d["higher_is_better"],
                   levels=[float(v) for v in d["levels"]], clean=d["clean"], batches=d["batches"],
                   seconds=d["seconds"], steps=d.get("steps", {}), fingerprint=d.get("fingerprint", ""),
                   samples=int(d.get("samples", 0)), scored=d.get("scored", ""),
                   noisy={a: {float(lv): v for lv, v in dd.items()} for a, dd in d["noisy"].items()},
                   random={float(lv): v for lv, v in (d.get("random") or {}).items()},
                   floor=d.get("floor", 0.0 if d["higher_is_better"] else None),
                   worst_of=list(d.get("worst_of") or []), radius=d.get("radius"),
                   per_sample=d.get("per_sample") or {}, protocol=d.get("protocol") or {"protocol": "paper"},
                   floor_from=d.get("floor_from") or "", objectives=d.get("objectives") or {})


def _lv_key(level: float) -> str:
    return f"{float(level):g}"


def _broken(scores: Tensor, clean: Tensor, threshold: float, relative: bool, higher: bool,
            floor: float | None) -> Tensor:
    """A sample is broken when its score falls below ``threshold`` x its clean score
    (relative; lower-is-better: rises above clean / threshold) or below ``threshold``
    (absolute). A sample already at the floor without noise counts as broken at radius 0."""
    if relative:
        if higher:
            out = scores < threshold * clean
            if floor is not None:
                out = out | (clean <= floor)
        else:
            out = scores > clean / threshold
    else:
        out = scores < threshold if higher else scores > threshold
    return out


def save_result(result: EvalResult, path: str | os.PathLike) -> None:
    from amat_hooks.atomic_files import atomic_write_json

    atomic_write_json(path, result.to_dict())


def load_result(path: str | os.PathLike) -> EvalResult:
    from amat_hooks.atomic_files import read_json

    return EvalResult.from_dict(read_json(path))
