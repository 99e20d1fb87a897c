"""Is a result to be trusted? The gradient-masking check (with a note about the levels where the
floor is not reached but the gradients work), and the demo's plain-language verdict."""
from __future__ import annotations

import math

from amat_hooks.evaluation.result import EvalResult

#: gradient-masking check: the worst case at the largest level must be within this share of
#: (clean - floor) above the floor, and the attack must lower the metric by at least this
#: share of (clean - floor) more than random noise of the same L2 norm does
MASKING_FLOOR_TOL = 0.1
MASKING_RANDOM_MARGIN = 0.02


def masking_check(result: EvalResult, floor_tol: float = MASKING_FLOOR_TOL,
                  random_margin: float = MASKING_RANDOM_MARGIN) -> list[str]:
    """The gradient-masking check of one model, at the largest level, for the worst case
    (``worst``, else the strongest attack):

    1. the random-noise comparison: it must lower the metric by at least ``random_margin`` x
       (clean - floor) more than random noise of the same L2 norm; else a ``WARNING`` (its
       gradients are no better than none);
    2. the floor (the task's trivial prediction where known: a constant mask, no detection):
       it should come within ``floor_tol`` x (clean - floor) of it. Falling short is a
       ``WARNING`` only where nothing shows the gradients work (1 failed or was not measured);
       where the attack clearly beats random noise it is a note about the levels (``levels:``):
       the model withstands the largest level, larger levels or ``--radius`` show where it breaks.

    Plus which attack gave each sample's worst value there, and the radius run's unbroken samples.
    Returns one line per finding; lines that start with ``WARNING`` are failures."""
    lines = _attack_checks(result, floor_tol, random_margin) if result.noisy else []
    if result.radius:
        r = result.radii()
        unbroken = sum(math.isinf(v) for v in r)
        if unbroken:
            lines.append(f"radius: {unbroken} of {len(r)} samples not broken within radius "
                         f"{result.radius['max_radius']:g}.")
    return lines


def worst_sources(result: EvalResult, level: float) -> dict[str, int]:
    """How many samples' worst value at ``level`` came from each attack (empty if not kept)."""
    picked = (result.per_sample.get("worst_from") or {}).get(f"{float(level):g}") or []
    counts = {a: 0 for a in result.worst_of}
    for a in picked:
        counts[a] = counts.get(a, 0) + 1
    return {a: n for a, n in counts.items() if n} if picked else {}


def _floor_words(result: EvalResult) -> str:
    if result.floor_from:
        return f"floor {result.floor:.4f} = {result.floor_from}"
    return f"floor {result.floor:g}"


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
    name = "worst case" if attack == "worst" else attack
    span = max(sign * (clean - floor), 1e-12) if floor is not None else max(abs(clean), 1e-12)
    # 1. random noise of the same norm (decides what falling short of the floor means)
    random_line, beats_noise = None, False
    if lv in result.random:
        rnd = result.random[lv][m]
        drop_a, drop_r = sign * (clean - adv), sign * (clean - rnd)
        random_at_floor = floor is not None and sign * (rnd - floor) <= floor_tol * span
        if random_at_floor:
            random_line = (f"masking check: random noise of norm {lv:g} alone drives {m} to {rnd:.4f}; the "
                           f"random-noise comparison says nothing at this level.")
        elif drop_a < drop_r + random_margin * span:
            random_line = (f"WARNING gradient masking? random noise of norm {lv:g} lowers {m} by {drop_r:.4f}, the "
                           f"{name} only by {drop_a:.4f}: the attack is no better than noise, so its gradients are "
                           f"uninformative (masked) or the attack failed.")
        else:
            beats_noise = True
            random_line = (f"masking check: the {name} ({adv:.4f}) hurts more than random noise of the same norm "
                           f"({rnd:.4f}).")
    # 2. the floor
    lines = []
    if floor is None:
        lines.append(f"masking check: {m} has no floor; only the random-noise comparison applies.")
    elif sign * (adv - floor) <= floor_tol * span:
        lines.append(f"masking check: the {name} drives {m} to {adv:.4f} at level {lv:g} ({_floor_words(result)}): "
                     f"near the floor.")
    elif beats_noise:
        lines.append(f"levels: the {name} drives {m} to {adv:.4f} at the largest level {lv:g} (clean {clean:.4f}, "
                     f"{_floor_words(result)}) and beats random noise, so its gradients work: the model withstands "
                     f"this level; larger --levels or --radius show where it breaks.")
    else:
        lines.append(f"WARNING gradient masking? the {name} drives {m} only to {adv:.4f} at the largest level "
                     f"{lv:g} (clean {clean:.4f}, {_floor_words(result)}); a sound attack should reach the floor at "
                     f"a large enough level. Either the model is robust at this level or its gradients mislead the "
                     f"attack: check with larger --levels or --radius.")
    if random_line is not None:
        lines.append(random_line)
    if attack == "worst":
        src = worst_sources(result, lv)
        if src:
            n = sum(src.values())
            lines.append(f"worst case at level {lv:g} from: " + ", ".join(
                f"{a} {k}/{n}" for a, k in sorted(src.items(), key=lambda kv: -kv[1])) + " samples.")
    return lines


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
