"""Paper-style robustness reports: tables (Markdown, CSV, JSON) shaped like Tables 1-7,
curves of metric vs noise level (PNG) and the margin histogram of an AMAT run."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

from .evaluation import EvalResult
from .atomic_files import atomic_write_json, atomic_write_text

_SHORT = {"pgd": "P", "ifgsm": "IF"}


def table_rows(results: Mapping[str, EvalResult], metric: str | None = None) -> tuple[list[str], list[list]]:
    """Header and rows: Method, clean, P.eps..., Avg., IF.eps..., Avg., AUC_robust."""
    first = next(iter(results.values()))
    m = metric or first.metric
    levels = first.levels
    for name, r in results.items():
        if r.levels != levels:
            raise ValueError(f"model {name} was evaluated at levels {r.levels}, others at {levels}")
    attacks = [a for a in ("pgd", "ifgsm") if a in first.noisy]
    head = ["Method", m]
    for a in attacks:
        head += [f"{_SHORT[a]}.{lv:g}" for lv in levels] + ["Avg."]
    head.append("AUC_robust")
    rows = []
    for name, r in results.items():
        row: list = [name, r.clean[m]]
        for a in attacks:
            c = r.curve(a, m)
            row += c + [sum(c) / len(c)]
        row.append(r.auc_robust("pgd" if "pgd" in attacks else attacks[0], m))
        rows.append(row)
    return head, rows


def _best(rows: list[list], higher: bool) -> list[int]:
    cols = len(rows[0])
    pick = max if higher else min
    return [pick(range(len(rows)), key=lambda i: rows[i][c]) for c in range(1, cols)]


def to_markdown(results: Mapping[str, EvalResult], metric: str | None = None, digits: int = 4) -> str:
    head, rows = table_rows(results, metric)
    higher = next(iter(results.values())).higher_is_better
    best = _best(rows, higher)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = [str(row[0])] + [(f"**{v:.{digits}f}**" if best[c] == i else f"{v:.{digits}f}")
                                 for c, v in enumerate(row[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    note = "higher is better" if higher else "lower is better"
    first = next(iter(results.values()))
    steps = ", ".join(f"{_SHORT[a]} = {n}-step {'PGD' if a == 'pgd' else 'IFGSM'}" for a, n in first.steps.items())
    scored = sorted({r.scored for r in results.values() if r.scored})
    what = f" Scored: {'; '.join(scored)}." if scored else ""
    return ("\n".join(lines) + f"\n\nBest per column in bold ({note})" + (f"; {steps}, L2." if steps else ".")
            + what)


def to_csv(results: Mapping[str, EvalResult], metric: str | None = None) -> str:
    head, rows = table_rows(results, metric)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for row in rows:
        w.writerow([row[0]] + [f"{v:.6f}" for v in row[1:]])
    return buf.getvalue()


def _save_png(fig, path: str | os.PathLike) -> Path:
    """Write a figure atomically (a half-written PNG never replaces a good one)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(results: Mapping[str, EvalResult], path: str | os.PathLike, metric: str | None = None,
                title: str = "") -> Path:
    """Metric vs noise level, one panel per attack, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    m = metric or first.metric
    attacks = [a for a in ("pgd", "ifgsm") if a in first.noisy]
    fig, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 3.8), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        for name, r in results.items():
            ax.plot([0.0] + r.levels, [r.clean[m]] + r.curve(a, m), marker="o", label=name)
        ax.set_xlabel("L2 noise level")
        ax.set_ylabel(m)
        n = first.steps.get(a)
        ax.set_title(f"{n or ('100' if a == 'pgd' else '10')}-step {'PGD' if a == 'pgd' else 'IFGSM'}")
        ax.grid(alpha=0.3)
    # outside the axes: with five models a legend inside covers the curves
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_png(fig, path)


def plot_margin_histogram(values: Sequence[float], path: str | os.PathLike, title: str = "AMAT margins") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(list(values), bins=30, color="#4477aa")
    ax.set_xlabel("margin E(i) (L2)")
    ax.set_ylabel("training samples")
    ax.set_title(f"{title} (n={len(values)})")
    return _save_png(fig, path)


def write_report(results: Mapping[str, EvalResult], out_dir: str | os.PathLike, name: str = "robustness",
                 title: str = "", margins: Sequence[float] | None = None,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``<name>.md/.csv/.json/.png`` (+ ``<name>_margins.png``) into ``out_dir``;
    ``notes`` (e.g. each AMAT model's margins and xi source) go under the title."""
    out = Path(out_dir)
    head = (f"# {title}\n\n" if title else "") + "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "")
    paths = {
        "md": atomic_write_text(out / f"{name}.md", head + to_markdown(results) + "\n"),
        "csv": atomic_write_text(out / f"{name}.csv", to_csv(results)),
        "json": atomic_write_json(out / f"{name}.json", {k: r.to_dict() for k, r in results.items()}
                                  | ({"_notes": list(notes)} if notes else {})),
        "png": plot_curves(results, out / f"{name}.png", title=title),
    }
    if margins is not None and len(margins):
        paths["margins_png"] = plot_margin_histogram(margins, out / f"{name}_margins.png")
    return paths
