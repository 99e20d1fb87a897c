"""The verdict of ``amat demo``: the paper's three claims checked on one run's results, each
as a sentence with its numbers (the thresholds below say what "noise" and "clear" mean)."""
from __future__ import annotations

from amat_hooks.evaluation import EvalResult

#: Differences smaller than this (ADI) are called noise: 1 point, the paper's own resolution.
NOISE = 0.01
#: "A clear margin": AMAT's PGD robust average must beat STD's by at least this much.
CLEAR_GAIN = 0.05
#: "Collapsed": STD's PGD ADI at the largest level is within this of a constant mask's ADI
#: (near 0 when that mask is "all background"; an attack that floods the image with the
#: object class leaves the all-object mask's ADI, ~0.26 on the demo's data) ...
COLLAPSED = 0.1
#: ... and "far below the others": at least this much below every other method there.
FAR_BELOW = 0.1


def pattern_verdict(results: dict[str, EvalResult], baseline: str = "STD",
                    trivial: float = 0.0) -> list[tuple[bool, str]]:
    """The paper's pattern, claim by claim, as (holds, sentence with the numbers):

    1. STD collapses at the largest noise level (PGD): its ADI there is no better than a
       constant mask's (``trivial`` + COLLAPSED; ``trivial`` = ADI of the better constant
       prediction on the test labels, 0 if unknown) and at least FAR_BELOW below every
       other method's.
    2. SAT is more robust than STD (PGD average, every SAT by >= NOISE) but pays clean
       accuracy at its largest eps (clean ADI below STD's by more than NOISE).
    3. AMAT is more robust than STD by a clear margin (PGD average >= CLEAR_GAIN more) and
       loses at most NOISE of clean ADI against STD.

    For higher-is-better metrics (the demo's ADI)."""
    out: list[tuple[bool, str]] = []
    std = results[baseline]
    lv = std.levels[-1]
    at_max = {k: r.curve("pgd")[-1] for k, r in results.items()}
    s_max = at_max[baseline]
    others = [v for k, v in at_max.items() if k != baseline]
    collapsed = s_max <= trivial + COLLAPSED
    below = all(v >= s_max + FAR_BELOW for v in others)
    ok1 = collapsed and below
    out.append((ok1, f"STD collapses at the largest noise level: {'holds' if ok1 else 'does not hold'} - "
                     f"PGD ADI at {lv:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in at_max.items())
                     + f"; a constant mask scores {trivial:.4f} (collapsed: STD <= {trivial + COLLAPSED:.4f}: "
                       f"{'yes' if collapsed else 'no'}; far below: every other method >= STD + {FAR_BELOW:g}: "
                       f"{'yes' if below else 'no'})"))
    sats = sorted((k for k in results if k.startswith("SAT")), key=lambda k: float(k[3:] or 0))
    if sats:
        big = sats[-1]
        gains = {k: results[k].average("pgd") - std.average("pgd") for k in sats}
        paid = std.clean["ADI"] - results[big].clean["ADI"]
        ok2 = all(g >= NOISE for g in gains.values()) and paid > NOISE
        out.append((ok2, f"SAT more robust than STD but pays clean accuracy at the larger eps: "
                         f"{'holds' if ok2 else 'does not hold'} - PGD average minus STD's: "
                         + ", ".join(f"{k} {g:+.4f}" for k, g in gains.items())
                         + f"; clean ADI {big} {results[big].clean['ADI']:.4f} vs STD {std.clean['ADI']:.4f} "
                           f"({-paid:+.4f}; paying = more than {NOISE:g} lower)"))
    if "AMAT" in results:
        a = results["AMAT"]
        gain = a.average("pgd") - std.average("pgd")
        dclean = a.clean["ADI"] - std.clean["ADI"]
        ok3 = gain >= CLEAR_GAIN and dclean >= -NOISE
        out.append((ok3, f"AMAT more robust than STD by a clear margin at (almost) no clean cost: "
                         f"{'holds' if ok3 else 'does not hold'} - PGD average AMAT {a.average('pgd'):.4f} vs "
                         f"STD {std.average('pgd'):.4f} ({gain:+.4f}; clear = at least +{CLEAR_GAIN:g}); clean ADI "
                         f"AMAT {a.clean['ADI']:.4f} vs STD {std.clean['ADI']:.4f} ({dclean:+.4f}; allowed "
                         f"-{NOISE:g})"))
    return out
