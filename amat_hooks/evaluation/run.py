"""Robustness evaluation (paper 3.3, plus the attacks that do not flatter a model): L2 PGD on
the training loss, IFGSM, SegPGD, CosPGD and masked CE, and the attacks a task aims at its own
metric (:meth:`EvalTask.objectives`: landmarks, detection) at several noise levels, the
per-sample worst case over them, a gradient-free random-noise baseline, and
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
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from amat_hooks.attacks import ifgsm, pgd
from amat_hooks.evaluation.progress import progress as show_progress
from amat_hooks.evaluation.objectives import SEGMENTATION_OBJECTIVES, ObjectiveLoss, supports_segmentation
from amat_hooks.evaluation.radius import RadiusSpec, _radius
from amat_hooks.evaluation.result import EvalResult, _lv_key
from amat_hooks.evaluation.task import (AttackNotSupported, EvalBatch, EvalTask, Objective, not_segmentation,
                                        score_rows)
from amat_hooks.protocols import eval_settings

#: the default attacks of :func:`robustness_eval` (the paper's)
ATTACKS = ("pgd", "ifgsm")
#: every attack ``--attacks`` knows for every task (plus each task's :meth:`EvalTask.objectives`);
#: ``worst`` is the per-sample worst case over the others listed
KNOWN_ATTACKS = ("pgd", "ifgsm", *SEGMENTATION_OBJECTIVES, "worst")
_STATE_VERSION = "eval-2"


def known_attacks(aimed: Sequence[str] = ()) -> tuple[str, ...]:
    """Every ``--attacks`` name for a task with these aimed objectives (``worst`` last)."""
    return (*KNOWN_ATTACKS[:-1], *aimed, KNOWN_ATTACKS[-1])


def task_objectives(task: "EvalTask") -> dict[str, Objective]:
    """The task's attack objectives aimed at its metric (:meth:`EvalTask.objectives`), checked:
    their names must not be the core's."""
    fn = getattr(task, "objectives", None)
    objs = dict(fn()) if fn is not None else {}
    clash = [n for n in objs if n in KNOWN_ATTACKS or n in ("clean", "random", "none")]
    if clash:
        raise ValueError(f"{type(task).__name__}.objectives() names {clash}: these are the core's; rename them")
    return objs


def check_attacks(task: "EvalTask", attacks: Sequence[str], radius: RadiusSpec | None = None) -> tuple[str, ...]:
    """The attacks in the order given, checked against what the task supports. With ``worst``,
    the task's objectives aimed at its metric (``in_worst``) that are not listed run too, just
    before it: the worst case is then over the training loss AND the metric's own attacks."""
    aimed = task_objectives(task)
    known = known_attacks(tuple(aimed))
    out: list[str] = []
    for a in attacks:
        a = a.strip().lower()
        if not a:
            continue
        if a not in known:
            raise ValueError(f"unknown attack {a!r}; choose from {known}")
        if a in out:
            raise ValueError(f"attack {a!r} listed twice")
        if a in SEGMENTATION_OBJECTIVES and not supports_segmentation(task):
            raise AttackNotSupported(not_segmentation(task, f"--attacks {a}"))
        out.append(a)
    if "worst" in out and len(out) < 2:
        raise ValueError("'worst' is the per-sample worst case over the other attacks listed: "
                         "list at least one more (e.g. --attacks pgd,segpgd,worst)")
    if not out and radius is None:
        raise ValueError("give at least one attack (--attacks) or a radius run (--radius)")
    if "worst" in out:
        i = out.index("worst")
        out[i:i] = [n for n, o in aimed.items() if o.in_worst and n not in out]
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


def _fingerprint(task: EvalTask, levels, attacks, pgd_steps, ifgsm_steps, seed,
                 radius: RadiusSpec | None = None, protocol: str = "paper") -> str:
    cfg = [task.name, task.metric, levels, list(attacks), pgd_steps, ifgsm_steps, seed,
           _STATE_VERSION, radius.to_dict() if radius is not None else None]
    if protocol != "paper":  # paper fingerprints stay those of results written before protocols
        cfg.append(protocol_for(task, protocol))
    return hashlib.sha1(json.dumps(cfg).encode()).hexdigest()[:16]


def task_kind(task: EvalTask) -> str:
    """The protocol column of a task: its adapter's ``protocol_kind`` (else the task's own)."""
    return getattr(task.adapter, "protocol_kind", None) or getattr(task, "protocol_kind", "generic")


def protocol_for(task: EvalTask, protocol: str) -> dict[str, Any]:
    """The evaluation settings (rows 12-14 of docs/protocols.md) of ``protocol`` for this task."""
    return {"protocol": protocol, **eval_settings(protocol, task_kind(task))}


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
                ifgsm_steps: int, seed: int, radius: RadiusSpec | None = None, protocol: str = "paper") -> str:
    """Identifies an evaluation: the same model evaluated the same way has the same one."""
    levels = check_levels(levels)
    attacks = check_attacks(task, attacks, radius)
    radius = radius.resolved(task, levels) if radius is not None else None
    return _fingerprint(task, levels, attacks, pgd_steps, ifgsm_steps, seed, radius, protocol)


def robustness_eval(task: EvalTask, levels: Sequence[float], *, attacks: Sequence[str] = ATTACKS,
                    pgd_steps: int = 100, ifgsm_steps: int = 10, state_path: str | os.PathLike | None = None,
                    resume: bool = False, progress: bool = True, seed: int = 0,
                    radius: RadiusSpec | None = None, protocol: str = "paper") -> EvalResult:
    """Evaluate ``task.model`` clean, under random noise and under each attack at every
    level; with ``radius``, also each sample's robust radius (one minimal-norm attack).

    ``attacks``: ``pgd`` (the training loss, ``pgd_steps``, random start), ``ifgsm``
    (``ifgsm_steps``, no random start), ``segpgd``/``cospgd``/``mce`` (PGD with
    ``pgd_steps`` on that objective; segmentation tasks only), the task's aimed objectives
    (PGD with ``pgd_steps``; with ``worst`` they run even when not listed) and ``worst`` (per
    sample and level, the listed attack that scores worst; a sample counts as broken if any
    attack breaks it). Every attack of a batch starts from the same seed. The masking check's
    floor is the best of the task's trivial predictions (:meth:`EvalTask.trivial_stats`) where
    it has them.

    With ``state_path``, each finished batch is appended there; ``resume=True`` skips the
    batches already in it (an interrupted evaluation continues where it stopped and gives
    the same numbers).

    ``protocol``: ``paper`` (the defaults above) or ``authors`` (the step sizes and model mode
    of the authors' evaluation scripts for the task's kind, :func:`amat_hooks.protocols.eval_settings`;
    which samples are scored is the task's, from the same settings).
    """
    levels = check_levels(levels)
    given = [a.strip().lower() for a in attacks]
    attacks = check_attacks(task, attacks, radius)
    objectives = task_objectives(task)
    added = [a for a in attacks if a not in given]
    if added:
        print(f"note: worst also runs the attacks aimed at this task's {task.metric}: {', '.join(added)} "
              f"(list them in --attacks to place them yourself)", file=sys.stderr)
    radius = radius.resolved(task, levels) if radius is not None else None
    settings = protocol_for(task, protocol)
    fp = _fingerprint(task, levels, attacks, pgd_steps, ifgsm_steps, seed, radius, protocol)
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
    model.train(settings["model_mode"] == "train")  # authors' landmark scripts never call net.eval()
    records: list[dict] = []
    t0 = time.perf_counter()
    keys_seen = set()
    try:
        for batch in show_progress(task.batches(), total=task.size(), desc=f"eval {task.name}", enabled=progress):
            if batch.key in keys_seen:
                raise ValueError(f"evaluation batch key {batch.key!r} is not unique")
            keys_seen.add(batch.key)
            if batch.key in done:
                records.append(done[batch.key])
                continue
            rec = _eval_batch(task, batch, levels, attacks, pgd_steps, ifgsm_steps, seed, radius, settings, objectives)
            rec.update(key=batch.key, fingerprint=fp)
            records.append(rec)
            if path is not None:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
    finally:
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
    floor, floor_from = _trivial_floor(task, records)
    aimed = {a: {"about": objectives[a].about, "short": objectives[a].short} for a in attacks if a in objectives}
    return EvalResult(task=task.name, metric=task.metric, higher_is_better=task.higher_is_better,
                      levels=levels, clean=clean, noisy=noisy, batches=len(records),
                      seconds=time.perf_counter() - t0, steps=steps,
                      fingerprint=fp, samples=samples, scored=task.describe_scored(samples),
                      random=random_, floor=floor, floor_from=floor_from, worst_of=worst_of, radius=rad,
                      per_sample=per_sample, protocol=settings, objectives=aimed)


def _trivial_floor(task: EvalTask, records: list[dict]) -> tuple[float | None, str]:
    """The best score of the task's trivial predictions over every batch (and its name), else
    the task's :meth:`~EvalTask.floor`. Batches recorded before trivial predictions were kept
    (a resumed evaluation) leave it at the latter."""
    trivial = [r.get("trivial") for r in records]
    if not trivial or any(not t for t in trivial) or any(set(t) != set(trivial[0]) for t in trivial):
        return task.floor(), ""
    scores = {name: float(task.reduce([t[name] for t in trivial])[task.metric]) for name in trivial[0]}
    best = (max if task.higher_is_better else min)(scores, key=scores.get)
    return scores[best], best


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
        scores: dict[str, Any] = {"clean": score_rows(task, stats["clean"])}
        for a in (*attacks, "random"):
            scores[a] = {k: score_rows(task, rows) for k, rows in stats[a].items()}
        out["scores"] = scores
    except Exception:
        if need_scores:
            raise
    return out


def _eval_batch(task: EvalTask, batch: EvalBatch, levels, attacks, pgd_steps, ifgsm_steps, seed,
                radius: RadiusSpec | None = None, settings: dict | None = None,
                objectives: dict[str, Objective] | None = None) -> dict:
    x, target = batch.x, batch.target
    b = x.shape[0]
    objectives = task_objectives(task) if objectives is None else objectives
    with torch.no_grad():
        rec: dict[str, Any] = {"clean": task.measure(x, target), "n": int(b)}
        trivial = task.trivial_stats(target)
        if trivial:
            rec["trivial"] = trivial
    if ("worst" in attacks or radius is not None) and not (isinstance(rec["clean"], list) and len(rec["clean"]) == b):
        raise ValueError(f"'worst' and the radius need {type(task).__name__}.measure to return a list with one "
                         f"entry per sample ({b}), got {type(rec['clean']).__name__}")
    n_levels = len(levels)
    xr, eps = multi_level(levels, x)
    terms = lambda z: task.loss_terms(z, target, n_levels)
    settings = settings or protocol_for(task, "paper")
    pgd_step = None if settings["pgd_step"] is None else settings["pgd_step"] * eps
    ifgsm_step = None if settings["ifgsm_step"] is None else settings["ifgsm_step"] * eps

    def per_level(x_adv: Tensor) -> list:
        with torch.no_grad():
            return [task.measure(x_adv[i * b:(i + 1) * b], target) for i in range(n_levels)]

    for a in attacks:
        if a == "worst":
            continue
        g = torch.Generator(device=x.device).manual_seed(seed)
        if a == "pgd":
            res = pgd(terms, xr, eps, steps=pgd_steps, step_size=pgd_step, bounds=task.bounds, model=task.model,
                      generator=g, random_start=settings["pgd_start"])
        elif a == "ifgsm":
            res = ifgsm(terms, xr, eps, steps=ifgsm_steps, step_size=ifgsm_step, bounds=task.bounds,
                        model=task.model)
        elif a in objectives:  # aimed at the task's metric: the same PGD, another objective
            aimed = (lambda fn: lambda z: fn(z, target, n_levels))(objectives[a].terms)
            res = pgd(aimed, xr, eps, steps=pgd_steps, step_size=pgd_step, bounds=task.bounds, model=task.model,
                      generator=g, random_start=settings["pgd_start"])
        else:
            res = pgd(ObjectiveLoss(task, a, target, n_levels), xr, eps, steps=pgd_steps, step_size=pgd_step,
                      bounds=task.bounds, model=task.model, generator=g, random_start=settings["pgd_start"])
        rec[a] = per_level(res.x_adv)
    rec["random"] = per_level(_random_noise(xr, eps, task.bounds, seed))
    if "worst" in attacks:
        rec["worst"], rec["worst_from"] = _worst(task, rec, [a for a in attacks if a != "worst"], n_levels, b)
    if radius is not None:
        rec["radius"], rec["radius_scores"] = _radius(task, x, target, rec["clean"], radius, objectives)
    return rec


def multi_level(eps_levels: Sequence[float], x: Tensor) -> tuple[Tensor, Tensor]:
    """Repeat a batch once per noise level: returns (x_rep [L*B, ...], eps [L*B]).

    Level-major order: rows ``l*B:(l+1)*B`` hold level ``eps_levels[l]``; one attack call
    then evaluates every level (per-sample eps), instead of one call per level.
    """
    levels = torch.as_tensor(list(eps_levels), dtype=torch.float32, device=x.device)
    if levels.numel() == 0 or not math.isfinite(float(levels.sum())):
        raise ValueError("eps_levels must be a non-empty list of finite noise levels")
    b = x.shape[0]
    return x.repeat(len(levels), *([1] * (x.dim() - 1))), levels.repeat_interleave(b)


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
            scores[a] = score_rows(task, rows)
        chosen = [pick(attacks, key=lambda a: scores[a][i]) for i in range(b)]
        rows_out.append([rec[a][lv][i] for i, a in enumerate(chosen)])
        from_out.append(chosen)
    return rows_out, from_out


