"""Every figure of amat-hooks, shaped for a paper: metric vs noise level with one panel per
attack and one line per method (mean +- sd band over the runs of a method), robust-radius
histograms, the margin histogram of an AMAT run (one bar per multiple of Delta) and
nnU-Net's ``progress_amat.png``. Each figure is written as PNG and, beside it, SVG.

**Runs of one method.** A result named ``METHOD/RUN`` (split at the last ``/``, e.g.
``AMAT/seed0``, ``AMAT/seed1``) is one run of ``METHOD``; other names are methods of their
own. ``groups={"AMAT": ["a", "b"]}`` says it explicitly instead. A method with two or more
runs is drawn as the mean over its runs with a band of +- one sample standard deviation
(``ddof=1``, the usual "mean +- sd over seeds"). ``amat eval --models AMAT/seed0=...,
AMAT/seed1=...`` therefore gives the band; :func:`runs_from_files` reads saved result files
into such names."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from amat_hooks.evaluation.result import EvalResult, load_result

#: Paul Tol's "bright" scheme (colour-blind safe), then black
COLOURS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#000000", "#BBBBBB")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BAND_ALPHA = 0.18


# -- saving ------------------------------------------------------------------------------------
def save_figure(fig, path: str | os.PathLike, tight: bool = True, dpi: int = 110, svg: bool = True) -> Path:
    """Write ``path`` (PNG) and, with ``svg``, the same figure as ``path.svg`` beside it, each
    atomically (a half-written file never replaces a good one); closes the figure. Returns the
    PNG's path."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [(path, {"dpi": dpi})]
    if svg:
        # no date in the metadata: the same figure gives the same file
        targets.append((path.with_suffix(".svg"), {"format": "svg", "metadata": {"Date": None}}))
    try:
        for target, kw in targets:
            tmp = target.with_name("." + target.stem + ".tmp" + target.suffix)
            fig.savefig(tmp, bbox_inches="tight" if tight else None, **kw)
            os.replace(tmp, target)
    finally:
        plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- runs of one method ------------------------------------------------------------------------
def group_runs(results: Mapping[str, EvalResult],
               groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[tuple[str, EvalResult]]]:
    """``{method: [(result name, result), ...]}`` in order of first appearance: ``groups``
    where given (names it leaves out are methods of their own), else ``METHOD/RUN`` names."""
    out: dict[str, list[tuple[str, EvalResult]]] = {}
    if groups is not None:
        owner: dict[str, str] = {}
        for method, names in groups.items():
            for n in names:
                if n not in results:
                    raise ValueError(f"groups: {method!r} names the result {n!r}, which is not among "
                                     f"{', '.join(results)}")
                if n in owner:
                    raise ValueError(f"groups: the result {n!r} is in {owner[n]!r} and in {method!r}; give it once")
                owner[n] = method
        for name, r in results.items():
            out.setdefault(owner.get(name, name), []).append((name, r))
        return out
    for name, r in results.items():
        method = name.rsplit("/", 1)[0] if "/" in name.strip("/") else name
        out.setdefault(method, []).append((name, r))
    return out


def runs_from_files(files: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, EvalResult]:
    """Saved result files (``amat eval``'s ``models/NAME.json``) per method -> results named
    ``METHOD/<file stem>`` (a single file: ``METHOD``), ready for :func:`write_report` and the
    figures' mean +- sd bands."""
    out: dict[str, EvalResult] = {}
    for method, paths in files.items():
        paths = list(paths)
        if not paths:
            raise ValueError(f"method {method!r} has no result file")
        stems = [Path(p).stem for p in paths]
        for i, (p, stem) in enumerate(zip(paths, stems)):
            if not Path(p).is_file():
                raise FileNotFoundError(f"result file {p} (method {method}) does not exist")
            run = stem if stems.count(stem) == 1 else f"{stem}{i}"
            out[method if len(paths) == 1 else f"{method}/{run}"] = load_result(p)
    return out


def mean_sd(rows: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Column-wise mean and sample standard deviation (``ddof=1``; 0 for a single row)."""
    n = len(rows)
    if n == 0:
        raise ValueError("mean_sd needs at least one row")
    cols = list(zip(*rows))
    mean = [sum(c) / n for c in cols]
    if n == 1:
        return mean, [0.0] * len(mean)
    sd = [math.sqrt(sum((v - m) ** 2 for v in c) / (n - 1)) for c, m in zip(cols, mean)]
    return mean, sd


def method_style(index: int) -> dict[str, Any]:
    """Colour, line style and marker of the ``index``-th method: three cues, so methods stay
    apart in grey print and where lines coincide (every second marker is hollow)."""
    colour = COLOURS[index % len(COLOURS)]
    return {"color": colour, "ls": LINESTYLES[index % len(LINESTYLES)], "marker": MARKERS[index % len(MARKERS)],
            "ms": 5.5 if index % 2 else 4.5, "lw": 1.6,
            "markerfacecolor": "white" if index % 2 else colour, "markeredgewidth": 1.2}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def curve_gid(attack: str, method: str) -> str:
    """The SVG id of a method's line in an attack's panel (``<g id="curve-pgd-AMAT">``)."""
    return f"curve-{_slug(attack)}-{_slug(method)}"


# -- metric vs noise level ---------------------------------------------------------------------
def curves_figure(results: Mapping[str, EvalResult], metric: str | None = None, title: str = "",
                  groups: Mapping[str, Sequence[str]] | None = None):
    """Metric vs L2 noise level: one panel per attack (the attacks every result has, in the
    report's order, then random noise of the same norm where every result has it), one line
    per method in each, the clean value at 0; a method with several runs as mean +- sd band
    (see the module docstring). One y-axis for all panels, one legend below them."""
    from amat_hooks.evaluation import report

    plt = _pyplot()
    attacks = report._attacks(results)
    first = next(iter(results.values()))
    m = metric or first.metric
    if all(r.random and all(lv in r.random for lv in r.levels) for r in results.values()):
        attacks = attacks + ["random"]
    if not attacks:
        attacks = ["clean"]
    methods = group_runs(results, groups)
    n = len(attacks)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.5 * rows + 0.5), squeeze=False, sharey=True)
    xs = [0.0] + list(first.levels)
    same_floor = m == first.metric and all(r.floor == first.floor for r in results.values())
    floor = first.floor if same_floor else None
    for k, attack in enumerate(attacks):
        ax = axes[k // cols][k % cols]
        ax.set_gid(f"panel-{_slug(attack)}")
        for i, (method, runs) in enumerate(methods.items()):
            curves = [[r.clean[m]] + _curve(r, attack, m) for _, r in runs]
            mean, sd = mean_sd(curves)
            style = method_style(i)
            label = method if len(runs) == 1 else f"{method} (mean \u00b1 sd, {len(runs)} runs)"
            (line,) = ax.plot(xs, mean, label=label, zorder=3 + i, **style)
            line.set_gid(curve_gid(attack, method))
            if len(runs) > 1:
                band = ax.fill_between(xs, [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)],
                                       color=style["color"], alpha=BAND_ALPHA, lw=0, zorder=2)
                band.set_gid("band-" + curve_gid(attack, method)[len("curve-"):])
        if floor is not None:  # the task's trivial prediction (constant mask, no detection), dotted
            ax.axhline(floor, ls=":", color="grey", lw=1, label=f"trivial prediction ({floor:.3g})", zorder=1)
        ax.set_title(_panel_title(attack, first, report), fontsize=9)
        ax.set_xlabel("L2 noise level")
        if k % cols == 0:
            ax.set_ylabel(m)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 4),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _curve(r: EvalResult, attack: str, m: str) -> list[float]:
    if attack == "random":
        return [r.random[lv][m] for lv in r.levels]
    if attack == "clean":
        return [r.clean[m] for _ in r.levels]
    return r.curve(attack, m)


def _panel_title(attack: str, r: EvalResult, report) -> str:
    if attack == "random":
        return "random noise, same L2 norm"
    if attack == "clean":
        return "clean (no attack evaluated)"
    return f"{report._short(attack)}: {report._describe(attack, r)}"


def plot_curves(results: Mapping[str, EvalResult], path: str | os.PathLike, metric: str | None = None,
                title: str = "", groups: Mapping[str, Sequence[str]] | None = None) -> Path:
    """:func:`curves_figure` written to ``path`` (PNG) and its SVG."""
    return save_figure(curves_figure(results, metric, title, groups), path)


# -- robust radius -----------------------------------------------------------------------------
def plot_radius_histograms(results: Mapping[str, EvalResult], path: str | os.PathLike, title: str = "") -> Path:
    """Histogram of the robust radii, one panel per model (samples not broken within the
    maximum radius in the last bar, marked); the evaluation levels dotted."""
    plt = _pyplot()
    have = {k: r for k, r in results.items() if r.radius}
    if not have:
        raise ValueError("no model of this report has a radius run")
    mx = max(float(r.radius["max_radius"]) for r in have.values())
    n = len(have)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.4), squeeze=False, sharex=True)
    bins = [mx * i / 30 for i in range(31)]
    for i, (ax, (name, r)) in enumerate(zip(axes[0], have.items())):
        radii = r.radii()
        fin = [v for v in radii if not math.isinf(v)]
        ax.hist(fin, bins=bins, color=COLOURS[i % len(COLOURS)], edgecolor="white", lw=0.4)
        unbroken = len(radii) - len(fin)
        if unbroken:
            ax.bar([mx * 1.04], [unbroken], width=mx / 30, color="#BBBBBB", hatch="//", edgecolor="black",
                   lw=0.4, label=f"> {mx:g}: {unbroken}")
            ax.legend(fontsize=8, frameon=False)
        for lv in r.levels:
            ax.axvline(lv, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("robust radius (L2)")
        ax.set_ylabel("samples")
        ax.set_title(f"{name} (n={len(radii)})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# -- AMAT margins ------------------------------------------------------------------------------
#: more distinct values than this are binned, not drawn one bar each
MAX_BARS = 60


def margin_bars(values: Sequence[float], delta: float | None = None) -> tuple[list[float], list[int], float] | None:
    """``(centres, counts, width)`` with one bar per distinct value when the values are
    multiples of ``delta`` (within 1e-6 relative; centres ``k * delta``) or, without ``delta``,
    when there are at most :data:`MAX_BARS` distinct values; None when they should be binned."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals:
        return None
    if delta is not None and delta > 0:
        ks = [round(v / delta) for v in vals]
        if all(abs(v - k * delta) <= 1e-6 * max(abs(v), delta) for v, k in zip(vals, ks)):
            if len(set(ks)) > MAX_BARS:
                return None
            counts: dict[int, int] = {}
            for k in ks:
                counts[k] = counts.get(k, 0) + 1
            order = sorted(counts)
            return [k * delta for k in order], [counts[k] for k in order], 0.8 * delta
        return None
    distinct = sorted(set(vals))
    if len(distinct) > MAX_BARS:
        return None
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    width = 0.8 * (min(gaps) if gaps else max(abs(distinct[0]), 1.0) * 0.1)
    return distinct, [vals.count(v) for v in distinct], width


def margin_histogram_figure(values: Sequence[float], delta: float | None = None, title: str = "AMAT margins"):
    """Margins E(i): one bar per multiple of ``delta`` when they are multiples (Algorithm 1
    grows them by Delta), else bins of width Delta centred on its multiples where that gives
    at most :data:`MAX_BARS` bins, else numpy's automatic bins."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    vals = [float(v) for v in values if math.isfinite(float(v))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = margin_bars(vals, delta)
    if bars is not None:
        centres, counts, width = bars
        ax.bar(centres, counts, width=width, color=COLOURS[0], edgecolor="black", lw=0.4)
        if delta and len(centres) <= 15:
            ax.set_xticks(centres, [f"{c / delta:.0f}\u0394" if c else "0" for c in centres])
    elif vals:
        lo, hi = min(vals), max(vals)
        if delta and delta > 0 and (hi - lo) / delta + 1 <= MAX_BARS:
            k0, k1 = math.floor(lo / delta + 0.5), math.floor(hi / delta + 0.5)
            bins = [(k - 0.5) * delta for k in range(k0, k1 + 2)]
        else:
            bins = np.histogram_bin_edges(vals, bins="auto")
            if len(bins) > MAX_BARS + 1:
                bins = np.linspace(lo, hi, MAX_BARS + 1)
        ax.hist(vals, bins=bins, color=COLOURS[0], edgecolor="white", lw=0.4)
    ax.set_xlabel("margin E(i) (L2)" + (f", \u0394 = {delta:g}" if delta else ""))
    ax.set_ylabel("training samples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title} (n={len(vals)})", fontsize=10)
    return fig


def plot_margin_histogram(values: Sequence[float], path: str | os.PathLike, title: str = "AMAT margins",
                          delta: float | None = None) -> Path:
    """:func:`margin_histogram_figure` written to ``path`` (PNG) and its SVG."""
    return save_figure(margin_histogram_figure(values, delta, title), path)


# -- nnU-Net's progress_amat.png ---------------------------------------------------------------
def training_margins_figure(series: Mapping[str, Sequence[float]], xi_label: str = "xi"):
    """Margin mean and min..max per epoch, xi on a second axis, integer epochs, one legend below
    the axes (None before the first epoch). ``series``: ``margin_mean``, ``margin_min``,
    ``margin_max``, ``xi`` lists of equal length. Call it inside ``plt.style.context("default")``
    (as :func:`plot_training_margins` does): nnU-Net's progress plot leaves seaborn's font scale set."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = len(series.get("margin_mean", []))
    if n == 0:
        return None
    x = list(range(n))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(x, series["margin_mean"], label="margin mean", color="b", marker="o" if n < 20 else None)
    ax.fill_between(x, series["margin_min"], series["margin_max"], color="b", alpha=0.15, label="margin min..max")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AMAT margin E (L2)")
    ax.set_title("amat-hooks: per-sample margins and threshold xi per epoch", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if n == 1:
        ax.set_xlim(-0.5, 0.5)
    ax2 = ax.twinx()
    ax2.plot(x, series["xi"], color="r", ls="--", label="xi", marker="x" if n < 20 else None)
    ax2.set_ylabel(xi_label)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=3, frameon=False)
    fig.tight_layout()
    fig.canvas.draw()  # tick labels exist (and use this style) from here on
    return fig


def plot_training_margins(series: Mapping[str, Sequence[float]], path: str | os.PathLike,
                          xi_label: str = "xi") -> Path | None:
    """``progress_amat.png`` (nnU-Net) and its SVG: :func:`training_margins_figure`, written atomically."""
    plt = _pyplot()
    with plt.style.context("default"):
        fig = training_margins_figure(series, xi_label)
        if fig is None:
            return None
        return save_figure(fig, path, tight=False, dpi=100)
