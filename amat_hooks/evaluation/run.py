"""Robustness evaluation (paper 3.3, plus the attacks that do not flatter a segmentation
model): L2 PGD on the training loss, IFGSM, SegPGD, CosPGD and masked CE at several noise
levels, the per-sample worst case over them, a gradient-free random-noise baseline, and
optionally each sample's robust radius from one minimal-norm attack. All levels of a
batch run in ONE attack call (the batch repeated per level, one eps per row); every
attack is :func:`amat_hooks.attacks.pgd` with another objective. Resumable: per-batch
results (every per-sample statistic) are appended to a JSONL file as they complete.

An integration supplies an :class:`EvalTask` (how to iterate its data, its loss terms,
its metric; for the segmentation objectives also
:class:`~amat_hooks.evaluation.objectives.SegmentationObjectives`); everything else is here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from amat_hooks.attacks import ifgsm, min_norm, multi_level, pgd
from amat_hooks.evaluation.metrics import auc_robust
from amat_hooks.evaluation.objectives import SEGMENTATION_OBJECTIVES, ObjectiveLoss, segmentation_step_fn, supports_segmentation

#: the default attacks of :func:`robustness_eval` (the paper's)
ATTACKS = ("pgd", "ifgsm")
#: every attack ``--attacks`` knows; ``worst`` is the per-sample worst case over the others listed
KNOWN_ATTACKS = ("pgd", "ifgsm", *SEGMENTATION_OBJECTIVES, "worst")
#: objectives of the radius run: ``loss`` = the task's training loss, or a segmentation objective
RADIUS_OBJECTIVES = ("loss", *SEGMENTATION_OBJECTIVES)
#: gradient-masking check: the worst case at the largest level must be within this share of
#: (clean - floor) above the floor, and the attack must lower the metric by at least this
#: share of (clean - floor) more than random noise of the same L2 norm does
MASKING_FLOOR_TOL = 0.1
MASKING_RANDOM_MARGIN = 0.02
_STATE_VERSION = "eval-2"


class AttackNotSupported(ValueError):
    """An attack the task cannot run (a segmentation objective on a detection task)."""


@dataclass
class EvalBatch:
    """One evaluation batch: ``key`` identifies it for resume (stable across runs)."""

    key: str
    x: Tensor
    target: Any


class EvalTask(ABC):
    """What an integration provides to evaluate one model.

    ``measure`` returns JSON-able per-batch statistics (e.g. per-sample TP/FP/FN, or
    per-image detections) and ``reduce`` turns the list of them into metric values.
    """

    name: str = "task"
    metric: str = "score"             # the primary metric (the table's value)
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None
    model: nn.Module

    @abstractmethod
    def batches(self) -> Iterable[EvalBatch]: ...

    @abstractmethod
    def loss_terms(self, x: Tensor, target: Any, repeats: int) -> Tensor:
        """Per-sample training-loss terms ``[repeats*B, K]`` for inputs ``x`` that hold the
        batch ``repeats`` times (level-major); ``target`` is the batch's own target."""

    @abstractmethod
    def measure(self, x: Tensor, target: Any) -> Any: ...

    @abstractmethod
    def reduce(self, stats: list[Any]) -> dict[str, float]: ...

    def size(self) -> int | None:
        """Number of batches, for the progress display (None if unknown)."""
        return None

    def describe_scored(self, samples: int) -> str:
        """What was scored, for the table caption (e.g. "412 slices of 8 cases")."""
        return f"{samples} samples"

    #: the worst value the primary metric can take (Dice: 0); None where it has none (MRE).
    #: The gradient-masking check asks whether the largest level gets near it.
    metric_floor: float | None = None

    def floor(self) -> float | None:
        if self.metric_floor is not None:
            return float(self.metric_floor)
        return 0.0 if self.higher_is_better else None

    def sample_scores(self, stats: Any) -> list[float]:
        """The primary metric of each sample of one :meth:`measure` output (``worst``, the
        radius threshold and the per-sample JSON need one entry per sample). Default: ``reduce``
        over each sample alone; override where that is slow or not per sample."""
        return [float(self.reduce([[row]])[self.metric]) for row in stats]


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
        thr = threshold if threshold is not None else r.get("threshold", RadiusSpec.threshold)
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
                "worst_of": self.worst_of, "radius": self.radius, "per_sample": self.per_sample}

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
                   per_sample=d.get("per_sample") or {})


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


@dataclass(frozen=True)
class RadiusSpec:
    """The radius run: per sample the smallest L2 noise that breaks it (:func:`amat_hooks.attacks.min_norm`).

    ``threshold`` 0.5 with ``relative``: broken when the sample's metric falls below half
    its clean value (lower-is-better metrics: above twice); ``relative=False``: below
    ``threshold`` itself. ``objectives``: ``loss`` (the task's training loss), ``segpgd``,
    ``cospgd`` or ``mce``; ``auto`` = ``mce`` for segmentation tasks, else ``loss``; several
    = the per-sample minimum. ``max_radius`` (default twice the largest level) bounds the
    search: a sample not broken within it has radius ``inf``.
    """

    objectives: tuple[str, ...] = ("auto",)
    threshold: float = 0.5
    relative: bool = True
    steps: int = 100
    max_radius: float | None = None

    def resolved(self, task: "EvalTask", levels: Sequence[float]) -> "RadiusSpec":
        objs = []
        for o in self.objectives:
            o = ("mce" if supports_segmentation(task) else "loss") if o == "auto" else o
            if o not in RADIUS_OBJECTIVES:
                raise ValueError(f"unknown radius objective {o!r}; choose from {('auto', *RADIUS_OBJECTIVES)}")
            if o in SEGMENTATION_OBJECTIVES and not supports_segmentation(task):
                raise AttackNotSupported(_not_segmentation(task, f"radius objective {o}"))
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


def _not_segmentation(task: "EvalTask", what: str) -> str:
    return (f"{what} needs a segmentation task (one that implements segmentation_logits and "
            f"segmentation_labels, see amat_hooks.evaluation.objectives.SegmentationObjectives); the {task.name} "
            f"task supports --attacks pgd,ifgsm,worst and --radius-objective loss")


def check_attacks(task: "EvalTask", attacks: Sequence[str], radius: RadiusSpec | None = None) -> tuple[str, ...]:
    """The attacks in the order given, checked against what the task supports."""
    out: list[str] = []
    for a in attacks:
        a = a.strip().lower()
        if not a:
            continue
        if a not in KNOWN_ATTACKS:
            raise ValueError(f"unknown attack {a!r}; choose from {KNOWN_ATTACKS}")
        if a in out:
            raise ValueError(f"attack {a!r} listed twice")
        if a in SEGMENTATION_OBJECTIVES and not supports_segmentation(task):
            raise AttackNotSupported(_not_segmentation(task, f"--attacks {a}"))
        out.append(a)
    if "worst" in out and len(out) < 2:
        raise ValueError("'worst' is the per-sample worst case over the other attacks listed: "
                         "list at least one more (e.g. --attacks pgd,segpgd,worst)")
    if not out and radius is None:
        raise ValueError("give at least one attack (--attacks) or a radius run (--radius)")
    return tuple(out)


def check_levels(levels: Sequence[float]) -> list[float]:
    """Noise levels must be > 0; unsorted lists are sorted (with a note)."""
    lv = [float(v) for v in levels]
    if not lv:
        raise ValueError("give at least one noise level (e.g. --levels 2,6,10)")
    bad = [v for v in lv if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"noise levels must be finite and > 0, got {bad}; the clean score is always reported")
    if lv != sorted(lv):
        print(f"note: noise levels {lv} sorted to {sorted(lv)}", file=sys.stderr)
        lv = sorted(lv)
    if len(set(lv)) != len(lv):
        raise ValueError(f"duplicate noise levels in {lv}")
    return lv


class _Progress:
    """A one-line progress display on stderr (no extra dependency)."""

    def __init__(self, total: int | None, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.t0 = time.perf_counter()
        self.n = 0

    def update(self, note: str = "") -> None:
        self.n += 1
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        tot = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total:
            eta = f" eta {el / self.n * (self.total - self.n):.0f}s"
        sys.stderr.write(f"\r{self.label}: batch {self.n}{tot} {el:.0f}s{eta} {note}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _fingerprint(task: EvalTask, levels, attacks, pgd_steps, ifgsm_steps, seed,
                 radius: RadiusSpec | None = None) -> str:
    cfg = json.dumps([task.name, task.metric, levels, list(attacks), pgd_steps, ifgsm_steps, seed,
                      _STATE_VERSION, radius.to_dict() if radius is not None else None])
    return hashlib.sha1(cfg.encode()).hexdigest()[:16]


def _read_state(path: Path, fingerprint: str) -> dict[str, dict]:
    """Finished batches of an interrupted run. A line cut by the interruption is dropped
    and the file rewritten without it, so new records never follow a broken line."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    good: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that batch is redone
            if rec.get("fingerprint") != fingerprint:
                raise ValueError(f"{path} holds results of a different evaluation (levels, attacks, "
                                 f"steps or radius settings differ); delete it or evaluate without --resume")
            done[rec["key"]] = rec
            good.append(json.dumps(rec) + "\n")
    from amat_hooks.atomic_files import atomic_write_text

    atomic_write_text(path, "".join(good))
    return done


def fingerprint(task: EvalTask, levels: Sequence[float], attacks: Sequence[str], pgd_steps: int,
                ifgsm_steps: int, seed: int, radius: RadiusSpec | None = None) -> str:
    """Identifies an evaluation: the same model evaluated the same way has the same one."""
    levels = check_levels(levels)
    attacks = check_attacks(task, attacks, radius)
    radius = radius.resolved(task, levels) if radius is not None else None
    return _fingerprint(task, levels, attacks, pgd_steps, ifgsm_steps, seed, radius)


def robustness_eval(task: EvalTask, levels: Sequence[float], *, attacks: Sequence[str] = ATTACKS,
                    pgd_steps: int = 100, ifgsm_steps: int = 10, state_path: str | os.PathLike | None = None,
                    resume: bool = False, progress: bool = True, seed: int = 0,
                    radius: RadiusSpec | None = None) -> EvalResult:
    """Evaluate ``task.model`` clean, under random noise and under each attack at every
    level; with ``radius``, also each sample's robust radius (one minimal-norm attack).

    ``attacks``: ``pgd`` (the training loss, ``pgd_steps``, random start), ``ifgsm``
    (``ifgsm_steps``, no random start), ``segpgd``/``cospgd``/``mce`` (PGD with
    ``pgd_steps`` on that objective; segmentation tasks only) and ``worst`` (per sample
    and level, the listed attack that scores worst; a sample counts as broken if any
    attack breaks it). Every attack of a batch starts from the same seed.

    With ``state_path``, each finished batch is appended there; ``resume=True`` skips the
    batches already in it (an interrupted evaluation continues where it stopped and gives
    the same numbers).
    """
    levels = check_levels(levels)
    attacks = check_attacks(task, attacks, radius)
    radius = radius.resolved(task, levels) if radius is not None else None
    fp = _fingerprint(task, levels, attacks, pgd_steps, ifgsm_steps, seed, radius)
    path = Path(state_path) if state_path else None
    done: dict[str, dict] = {}
    if path is not None:
        if resume:
            done = _read_state(path, fp)
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
    model = task.model
    was_training = model.training
    model.eval()
    records: list[dict] = []
    bar = _Progress(task.size(), f"eval {task.name}", progress)
    t0 = time.perf_counter()
    keys_seen = set()
    try:
        for batch in task.batches():
            if batch.key in keys_seen:
                raise ValueError(f"evaluation batch key {batch.key!r} is not unique")
            keys_seen.add(batch.key)
            if batch.key in done:
                records.append(done[batch.key])
                bar.update("(resumed)")
                continue
            rec = _eval_batch(task, batch, levels, attacks, pgd_steps, ifgsm_steps, seed, radius)
            rec.update(key=batch.key, fingerprint=fp)
            records.append(rec)
            if path is not None:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
    if not records:
        raise ValueError(f"the {task.name} evaluation data is empty: nothing to evaluate")
    clean = task.reduce([r["clean"] for r in records])
    noisy = {a: {lv: task.reduce([r[a][i] for r in records]) for i, lv in enumerate(levels)}
             for a in attacks}
    random_ = {lv: task.reduce([r["random"][i] for r in records]) for i, lv in enumerate(levels)}
    for name, vals in [("clean", clean)] + [(f"{a}@{lv:g}", v) for a in noisy for lv, v in noisy[a].items()]:
        for k, v in vals.items():
            if isinstance(v, float) and math.isnan(v):
                raise ValueError(f"metric {k} is NaN for {name}: the report would be misleading")
    samples = sum(int(r.get("n", 0)) for r in records)
    steps = {a: (ifgsm_steps if a == "ifgsm" else pgd_steps) for a in attacks if a != "worst"}
    worst_of = [a for a in attacks if a != "worst"] if "worst" in attacks else []
    per_sample = _per_sample_results(task, records, levels, attacks, need_scores=bool(worst_of or radius))
    rad = None
    if radius is not None:
        values = {o: [v for r in records for v in r["radius"][o]] for o in radius.objectives}
        combined = [None if all(values[o][i] is None for o in values) else
                    min(values[o][i] for o in values if values[o][i] is not None)
                    for i in range(len(next(iter(values.values()))))]
        rad = {**radius.to_dict(), "values": values, "radius": combined,
               "scores": {o: [v for r in records for v in r["radius_scores"][o]] for o in radius.objectives}}
    return EvalResult(task=task.name, metric=task.metric, higher_is_better=task.higher_is_better,
                      levels=levels, clean=clean, noisy=noisy, batches=len(records),
                      seconds=time.perf_counter() - t0, steps=steps,
                      fingerprint=fp, samples=samples, scored=task.describe_scored(samples),
                      random=random_, floor=task.floor(), worst_of=worst_of, radius=rad,
                      per_sample=per_sample)


def _per_sample_results(task: EvalTask, records: list[dict], levels, attacks, need_scores: bool) -> dict:
    """Every sample's statistics (as ``measure`` wrote them) and primary-metric score, so a
    later report needs no re-run. Scores are best effort where nothing needs them."""
    ids = [f"{r['key']}/{i}" for r in records for i in range(len(r["clean"]))]
    stats: dict[str, Any] = {"clean": [row for r in records for row in r["clean"]]}
    for a in (*attacks, "random"):
        stats[a] = {_lv_key(lv): [row for r in records for row in r[a][i]] for i, lv in enumerate(levels)}
    out: dict[str, Any] = {"ids": ids, "stats": stats}
    if "worst" in attacks:
        out["worst_from"] = {_lv_key(lv): [a for r in records for a in r["worst_from"][i]]
                             for i, lv in enumerate(levels)}
    if not need_scores and type(task).sample_scores is EvalTask.sample_scores:
        return out  # the generic per-sample reduce can be slow (YOLO): only when something needs it
    try:
        scores: dict[str, Any] = {"clean": _scores(task, stats["clean"])}
        for a in (*attacks, "random"):
            scores[a] = {k: _scores(task, rows) for k, rows in stats[a].items()}
        out["scores"] = scores
    except Exception:
        if need_scores:
            raise
    return out


def _scores(task: EvalTask, rows: list) -> list[float]:
    return [float(v) for v in task.sample_scores(rows)]


def _eval_batch(task: EvalTask, batch: EvalBatch, levels, attacks, pgd_steps, ifgsm_steps, seed,
                radius: RadiusSpec | None = None) -> dict:
    x, target = batch.x, batch.target
    b = x.shape[0]
    with torch.no_grad():
        rec: dict[str, Any] = {"clean": task.measure(x, target), "n": int(b)}
    if ("worst" in attacks or radius is not None) and not (isinstance(rec["clean"], list) and len(rec["clean"]) == b):
        raise ValueError(f"'worst' and the radius need {type(task).__name__}.measure to return a list with one "
                         f"entry per sample ({b}), got {type(rec['clean']).__name__}")
    n_levels = len(levels)
    xr, eps = multi_level(levels, x)
    terms = lambda z: task.loss_terms(z, target, n_levels)

    def per_level(x_adv: Tensor) -> list:
        with torch.no_grad():
            return [task.measure(x_adv[i * b:(i + 1) * b], target) for i in range(n_levels)]

    for a in attacks:
        if a == "worst":
            continue
        g = torch.Generator(device=x.device).manual_seed(seed)
        if a == "pgd":
            res = pgd(terms, xr, eps, steps=pgd_steps, bounds=task.bounds, model=task.model, generator=g)
        elif a == "ifgsm":
            res = ifgsm(terms, xr, eps, steps=ifgsm_steps, bounds=task.bounds, model=task.model)
        else:
            res = pgd(ObjectiveLoss(task, a, target, n_levels), xr, eps, steps=pgd_steps, bounds=task.bounds,
                      model=task.model, generator=g)
        rec[a] = per_level(res.x_adv)
    rec["random"] = per_level(_random_noise(xr, eps, task.bounds, seed))
    if "worst" in attacks:
        rec["worst"], rec["worst_from"] = _worst(task, rec, [a for a in attacks if a != "worst"], n_levels, b)
    if radius is not None:
        rec["radius"], rec["radius_scores"] = _radius(task, x, target, rec["clean"], radius)
    return rec


def _random_noise(x: Tensor, eps: Tensor, bounds, seed: int) -> Tensor:
    """x plus noise drawn uniformly on each row's L2 sphere of radius eps (gradient-free baseline)."""
    g = torch.Generator(device=x.device).manual_seed(seed + 7919)
    d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    z = x + d * eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return z if bounds is None else z.clamp(bounds[0], bounds[1])


def _worst(task: EvalTask, rec: dict, attacks: list[str], n_levels: int, b: int) -> tuple[list, list]:
    """Per level and sample, the statistics of the attack with the worst primary metric (the
    first listed on ties)."""
    pick = min if task.higher_is_better else max
    rows_out, from_out = [], []
    for lv in range(n_levels):
        scores = {}
        for a in attacks:
            rows = rec[a][lv]
            if not (isinstance(rows, list) and len(rows) == b):
                raise ValueError(f"'worst' needs measure() to return one entry per sample ({b})")
            scores[a] = _scores(task, rows)
        chosen = [pick(attacks, key=lambda a: scores[a][i]) for i in range(b)]
        rows_out.append([rec[a][lv][i] for i, a in enumerate(chosen)])
        from_out.append(chosen)
    return rows_out, from_out


def _radius(task: EvalTask, x: Tensor, target: Any, clean_stats: list, spec: RadiusSpec) -> tuple[dict, dict]:
    """Per objective, each sample's radius (None = not broken within ``max_radius``) and its
    score at the breaking point (measured again through ``task.measure``)."""
    clean = torch.tensor(_scores(task, clean_stats), dtype=torch.float64, device=x.device)
    floor = task.floor()

    def broken(scores: Tensor) -> Tensor:  # on the device: no host sync per step
        return _broken(scores.to(clean.device, torch.float64), clean, spec.threshold, spec.relative,
                       task.higher_is_better, floor)

    radii, scores = {}, {}
    for obj in spec.objectives:
        if obj == "loss":
            def step(z, it, steps):
                t = task.loss_terms(z, target, 1)
                with torch.no_grad():
                    s = torch.tensor(_scores(task, task.measure(z.detach(), target)), dtype=torch.float64)
                return t, broken(s)  # measure() is the task's: one extra no-grad forward per step
        else:
            step = segmentation_step_fn(task, obj, target, 1, broken)
        res = min_norm(step, x, max_radius=spec.max_radius, steps=spec.steps, bounds=task.bounds,
                       model=task.model)
        with torch.no_grad():
            at = _scores(task, task.measure(res.x_adv, target))
        radii[obj] = [float(r) if bool(f) else None for r, f in zip(res.radius.tolist(), res.found.tolist())]
        scores[obj] = at
    return radii, scores


def masking_check(result: EvalResult, floor_tol: float = MASKING_FLOOR_TOL,
                  random_margin: float = MASKING_RANDOM_MARGIN) -> list[str]:
    """The gradient-masking check of one model: at the largest level, (1) the worst case
    (``worst``, else the strongest attack) must drive the metric to within ``floor_tol`` x
    (clean - floor) of its floor, and (2) it must lower the metric by at least
    ``random_margin`` x (clean - floor) more than random noise of the same L2 norm.
    Returns one line per finding; lines that start with ``WARNING`` are failures."""
    lines = _attack_checks(result, floor_tol, random_margin) if result.noisy else []
    if result.radius:
        r = result.radii()
        unbroken = sum(math.isinf(v) for v in r)
        if unbroken:
            lines.append(f"radius: {unbroken} of {len(r)} samples not broken within radius "
                         f"{result.radius['max_radius']:g}.")
    return lines


def _attack_checks(result: EvalResult, floor_tol: float, random_margin: float) -> list[str]:
    m, higher = result.metric, result.higher_is_better
    lv = result.levels[-1]
    if "worst" in result.noisy:
        attack = "worst"
    else:
        pick = min if higher else max
        attack = pick(result.noisy, key=lambda a: result.noisy[a][lv][m])
    clean, adv = result.clean[m], result.noisy[attack][lv][m]
    sign = 1.0 if higher else -1.0
    floor = result.floor
    lines = []
    name = "worst case" if attack == "worst" else attack
    if floor is not None:
        span = max(sign * (clean - floor), 1e-12)
        near = sign * (adv - floor) <= floor_tol * span
        if not near:
            lines.append(f"WARNING gradient masking? the {name} drives {m} only to {adv:.4f} at the largest level "
                         f"{lv:g} (clean {clean:.4f}, floor {floor:g}); a sound attack should reach the floor at a "
                         f"large enough level. Either the model is robust at this level or its gradients mislead the "
                         f"attack: check with larger --levels or --radius.")
        else:
            lines.append(f"masking check: the {name} drives {m} to {adv:.4f} at level {lv:g} (floor {floor:g}): near "
                         f"the floor.")
    else:
        span = max(abs(clean), 1e-12)
        lines.append(f"masking check: {m} has no floor; only the random-noise comparison applies.")
    if lv in result.random:
        rnd = result.random[lv][m]
        drop_a, drop_r = sign * (clean - adv), sign * (clean - rnd)
        random_at_floor = floor is not None and sign * (rnd - floor) <= floor_tol * span
        if random_at_floor:
            lines.append(f"masking check: random noise of norm {lv:g} alone drives {m} to {rnd:.4f}; the "
                         f"random-noise comparison says nothing at this level.")
        elif drop_a < drop_r + random_margin * span:
            lines.append(f"WARNING gradient masking? random noise of norm {lv:g} lowers {m} by {drop_r:.4f}, the "
                         f"{name} only by {drop_a:.4f}: the attack is no better than noise, so its gradients are "
                         f"uninformative (masked) or the attack failed.")
        else:
            lines.append(f"masking check: the {name} ({adv:.4f}) hurts more than random noise of the same norm "
                         f"({rnd:.4f}).")
    return lines


def save_result(result: EvalResult, path: str | os.PathLike) -> None:
    from amat_hooks.atomic_files import atomic_write_json

    atomic_write_json(path, result.to_dict())


def load_result(path: str | os.PathLike) -> EvalResult:
    from amat_hooks.atomic_files import read_json

    return EvalResult.from_dict(read_json(path))


def warn_if_weak(results: dict[str, EvalResult], baseline: str = "STD", noise: float = 0.01) -> list[str]:
    """Plain-language verdict for the demo: did this budget show the paper's effect?

    Differences smaller than ``noise`` (in metric units) are called what they are: too
    small to show anything at this budget."""
    notes = []
    if baseline in results and "AMAT" in results:
        s, a = results[baseline], results["AMAT"]
        diff = a.average("pgd") - s.average("pgd")
        gain = diff if a.higher_is_better else -diff
        head = (f"AMAT robust average under PGD {a.average('pgd'):.4f} vs {baseline} {s.average('pgd'):.4f} "
                f"(difference {diff:+.4f}): ")
        if gain >= noise:
            notes.append(head + "AMAT more robust, as the paper claims.")
        elif gain > 0:
            notes.append(head + f"AMAT ahead, but by less than {noise} - too small to show the paper's effect "
                                f"at this budget; train longer (--epochs) for a clear result.")
        else:
            notes.append(head + "AMAT NOT more robust at this budget - the demo does not reproduce the "
                                "paper's effect here; train longer (--epochs).")
    sats = [k for k in results if k.startswith("SAT")]
    if sats and "AMAT" in results:
        pick = max if results["AMAT"].higher_is_better else min
        best = pick(sats, key=lambda k: results[k].average("pgd"))
        a, s = results["AMAT"].average("pgd"), results[best].average("pgd")
        ahead = a >= s if results["AMAT"].higher_is_better else a <= s
        notes.append(f"AMAT vs best SAT ({best}) robust average under PGD: {a:.4f} vs {s:.4f}"
                     + ("" if ahead else " - SAT ahead at this budget"))
    return notes
