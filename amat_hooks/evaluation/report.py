"""Paper-style robustness reports: tables (Markdown, CSV, JSON) shaped like Tables 1-7 with
one block per attack and the per-sample worst case, and the gradient-masking check;
:func:`write_report` adds the figures of :mod:`amat_hooks.evaluation.figures` (metric vs
noise level per attack, robust-radius and margin histograms, PNG + SVG)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from amat_hooks.atomic_files import atomic_write_json, atomic_write_text
from amat_hooks.evaluation import EvalResult, masking_check
from amat_hooks.evaluation.figures import plot_curves, plot_margin_histogram, plot_radius_histograms

_SHORT = {"pgd": "P", "ifgsm": "IF", "segpgd": "SEG", "cospgd": "COS", "mce": "MCE", "worst": "W"}
_LONG = {"pgd": "PGD on the training loss", "ifgsm": "IFGSM on the training loss", "segpgd": "SegPGD",
         "cospgd": "CosPGD", "mce": "masked CE", "worst": "worst case"}
_PAPER = ("pgd", "ifgsm")
_ORDER = ("pgd", "ifgsm", "segpgd", "cospgd", "mce", "worst")


def _attacks(results: Mapping[str, EvalResult]) -> list[str]:
    first = next(iter(results.values()))
    for name, r in results.items():
        if r.levels != first.levels:
            raise ValueError(f"model {name} was evaluated at levels {r.levels}, others at {first.levels}")
    order = [a for a in _ORDER if a != "worst"] + [a for a in first.noisy if a not in _ORDER] + ["worst"]
    common = [a for a in order if all(a in r.noisy for r in results.values())]
    return common


def _short(a: str, r: EvalResult | None = None) -> str:
    aimed = (r.objectives.get(a) or {}).get("short") if r is not None else None
    return aimed or _SHORT.get(a, a.upper())


def _describe(attack: str, r: EvalResult) -> str:
    if attack == "worst":
        over = ", ".join(r.worst_of) if r.worst_of else "the attacks listed"
        return f"worst case per sample over {over}"
    n = r.steps.get(attack)
    aimed = r.objectives.get(attack)
    what = f"PGD aimed at the metric ({attack}): {aimed['about']}" if aimed else _LONG.get(attack, attack)
    return f"{n}-step " + what if n else what


def worst_source_rows(results: Mapping[str, EvalResult]) -> tuple[list[str], list[list[str]]]:
    """Per model and level, how many samples' worst value each attack gave (``per_sample.worst_from``)."""
    from amat_hooks.evaluation.checks import worst_sources

    have = {k: r for k, r in results.items() if "worst" in r.noisy and r.per_sample.get("worst_from")}
    if not have:
        return [], []
    levels = next(iter(have.values())).levels
    head = ["Method"] + [f"W.{lv:g} from" for lv in levels]
    rows = []
    for name, r in have.items():
        cells = []
        for lv in levels:
            src = worst_sources(r, lv)
            cells.append(", ".join(f"{_short(a, r)} {k}" for a, k in sorted(src.items(), key=lambda kv: -kv[1])))
        rows.append([name] + cells)
    return head, rows


def _paper_block(results: Mapping[str, EvalResult], m: str, paper: list[str]) -> tuple[list[str], list[list]]:
    """Method, clean, then per attack of the paper (P., IF.) its levels and Avg., then the
    AUC_robust of the first of them: the shape of Tables 1-7."""
    levels = next(iter(results.values())).levels
    head = ["Method", m]
    for a in paper:
        head += [f"{_short(a)}.{lv:g}" for lv in levels] + ["Avg."]
    head.append("AUC_robust")
    rows = []
    for name, r in results.items():
        row: list = [name, r.clean[m]]
        for a in paper:
            c = r.curve(a, m)
            row += c + [sum(c) / len(c)]
        rows.append(row + [r.auc_robust(paper[0], m)])
    return head, rows


def table_rows(results: Mapping[str, EvalResult], metric: str | None = None) -> tuple[list[str], list[list]]:
    """Header and rows: Method, clean, P.eps..., Avg., IF.eps..., Avg., AUC_robust (of PGD,
    else of the first attack), then for every further attack its block
    ``SEG.eps..., SEG.Avg., SEG.AUC_robust`` (the CSV; Markdown splits them into tables)."""
    first = next(iter(results.values()))
    m = metric or first.metric
    attacks = _attacks(results)
    paper = [a for a in attacks if a in _PAPER]
    extra = [a for a in attacks if a not in _PAPER]
    if paper:
        head, rows = _paper_block(results, m, paper)
    else:
        head = ["Method", m] + (["AUC_robust"] if attacks else [])
        rows = [[name, r.clean[m]] + ([r.auc_robust(attacks[0], m)] if attacks else [])
                for name, r in results.items()]
    for a in extra:
        k = _short(a, first)
        head += [f"{k}.{lv:g}" for lv in first.levels] + [f"{k}.Avg.", f"{k}.AUC_robust"]
    for row, r in zip(rows, results.values()):
        for a in extra:
            c = r.curve(a, m)
            row += c + [sum(c) / len(c), r.auc_robust(a, m)]
    return head, rows


def _best(rows: list[list], higher: bool) -> list[int]:
    cols = len(rows[0])
    pick = max if higher else min
    return [pick(range(len(rows)), key=lambda i: rows[i][c]) for c in range(1, cols)]


def _md_table(head: list[str], rows: list[list], higher: bool, digits: int) -> list[str]:
    best = _best(rows, higher)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = [str(row[0])] + [(f"**{v:.{digits}f}**" if best[c] == i else f"{v:.{digits}f}")
                                 for c, v in enumerate(row[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def protocol_note(r: EvalResult) -> str:
    """The caption's words for a non-default evaluation protocol (docs/protocols.md rows 12-14)."""
    p = r.protocol or {}
    if p.get("protocol", "paper") == "paper":
        return ""
    step = lambda k, rule: f"{p[k]:g} eps" if p.get(k) is not None else rule
    return (f" Protocol {p['protocol']}: PGD step {step('pgd_step', '2.5 eps / steps')}, IFGSM step "
            f"{step('ifgsm_step', 'eps / steps')}, model in {p.get('model_mode', 'eval')} mode"
            + (", slices holding every foreground class" if p.get("samples") == "every_class" else "") + ".")


def to_markdown(results: Mapping[str, EvalResult], metric: str | None = None, digits: int = 4) -> str:
    """The paper's table (clean, P. and IF. blocks, AUC_robust) and, for every other attack,
    one table of the same shape; the ``worst`` table last (the number to quote)."""
    first = next(iter(results.values()))
    m = metric or first.metric
    higher = first.higher_is_better
    attacks = _attacks(results)
    paper = [a for a in attacks if a in _PAPER]
    extra = [a for a in attacks if a not in _PAPER]
    note = "higher is better" if higher else "lower is better"
    scored = sorted({r.scored for r in results.values() if r.scored})
    what = f" Scored: {'; '.join(scored)}." if scored else ""
    what += protocol_note(first)
    out: list[str] = []
    if not attacks:
        rows = [[name, r.clean[m]] for name, r in results.items()]
        out += _md_table(["Method", m], rows, higher, digits)
        out += ["", f"Clean scores ({note}).{what}"]
    if paper:
        out += _md_table(*_paper_block(results, m, paper), higher, digits)
        steps = ", ".join(f"{_short(a)} = {first.steps[a]}-step {'PGD' if a == 'pgd' else 'IFGSM'}"
                          for a in paper if a in first.steps)
        out.append("")
        out.append(f"Best per column in bold ({note})" + (f"; {steps}, L2." if steps else ".") + what)
    for a in extra:
        head = ["Method", m] + [f"{_short(a, first)}.{lv:g}" for lv in first.levels] + ["Avg.", "AUC_robust"]
        rows = []
        for name, r in results.items():
            c = r.curve(a, m)
            rows.append([name, r.clean[m]] + c + [sum(c) / len(c), r.auc_robust(a, m)])
        title = f"{_short(a, first)}: {_describe(a, first)}, L2"
        if a == "worst":
            title += " - a sample counts as broken if any attack breaks it; the number to quote"
        out += ["", f"**{title}** ({note})", ""] + _md_table(head, rows, higher, digits)
        src_head, src_rows = worst_source_rows(results) if a == "worst" else ([], [])
        if src_rows:
            out += ["", "Where each sample's worst value came from (samples per attack):", "",
                    "| " + " | ".join(src_head) + " |", "|" + "---|" * len(src_head)]
            out += ["| " + " | ".join(row) + " |" for row in src_rows]
    return "\n".join(out).lstrip("\n")


def radius_markdown(results: Mapping[str, EvalResult], digits: int = 4) -> str:
    """The radius block: per model the share of samples robust at each level from one
    minimal-norm run, next to the same share from the per-level worst case where kept."""
    have = {k: r for k, r in results.items() if r.radius}
    if not have:
        return ""
    first = next(iter(have.values()))
    spec = first.radius
    rel = spec.get("relative", True)
    thr = spec["threshold"]
    crit = (f"{first.metric} falls below {thr:g} x its clean value" if rel and first.higher_is_better else
            f"{first.metric} rises above its clean value / {thr:g}" if rel else
            f"{first.metric} is {'below' if first.higher_is_better else 'above'} {thr:g}")
    head = ["Method", "median radius", "broken"] + [f"R.{lv:g}" for lv in first.levels] + ["AUC_robust"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in have.items():
        radii = r.radii()
        fin = sorted(radii)
        med = fin[len(fin) // 2]
        med_s = "inf" if math.isinf(med) else f"{med:.{digits}f}"
        n_broken = sum(not math.isinf(v) for v in radii)
        cells = [f"{name} (radius)", med_s, f"{n_broken}/{len(radii)}"] + [
            f"{v:.{digits}f}" for v in r.radius_curve()] + [f"{r.radius_auc():.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
        ref = "worst" if "worst" in r.noisy else (next(iter(r.noisy)) if r.noisy else None)
        if ref is not None and r.per_sample.get("scores"):
            curve = r.unbroken_fraction(ref)
            clean0 = 1.0 - sum(r.broken(r.sample_scores("clean", 0), r.sample_scores("clean", 0), thr, rel)) / len(radii)
            from amat_hooks.evaluation.metrics import auc_robust

            cells = [f"{name} (per level, {_short(ref)})", "", ""] + [f"{v:.{digits}f}" for v in curve] + [
                f"{auc_robust(clean0, curve, r.levels):.{digits}f}"]
            lines.append("| " + " | ".join(cells) + " |")
    objs = ", ".join(spec["objectives"])
    return (f"**Robust radius** ({spec['steps']}-step minimal-norm L2 attack on {objs}; a sample is broken when "
            f"its {crit}; R.eps = share of samples not broken at eps; max radius {spec['max_radius']:g}; "
            f"histograms in the _radii.png)\n\n" + "\n".join(lines))


def masking_lines(results: Mapping[str, EvalResult]) -> list[str]:
    """The gradient-masking check of every model, one line per finding (``name: ...``)."""
    out = []
    for name, r in results.items():
        out += [f"{name}: {line}" for line in masking_check(r)]
    return out


def to_csv(results: Mapping[str, EvalResult], metric: str | None = None) -> str:
    head, rows = table_rows(results, metric)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for row in rows:
        w.writerow([row[0]] + [f"{v:.6f}" for v in row[1:]])
    return buf.getvalue()


def write_report(results: Mapping[str, EvalResult], out_dir: str | os.PathLike, name: str = "robustness",
                 title: str = "", margins: Sequence[float] | None = None,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``<name>.md/.csv/.json/.png`` (+ ``<name>_radii.png`` with a radius run,
    ``<name>_margins.png``) into ``out_dir``; ``notes`` (e.g. each AMAT model's margins and
    xi source) go under the title; the gradient-masking check after the tables."""
    out = Path(out_dir)
    head = (f"# {title}\n\n" if title else "") + "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "")
    body = to_markdown(results) + "\n"
    rad = radius_markdown(results)
    if rad:
        body += "\n" + rad + "\n"
    checks = masking_lines(results)
    if checks:
        body += "\n**Gradient-masking check** (largest level)\n\n" + "".join(f"- {c}\n" for c in checks)
    paths = {
        "md": atomic_write_text(out / f"{name}.md", head + body),
        "csv": atomic_write_text(out / f"{name}.csv", to_csv(results)),
        "json": atomic_write_json(out / f"{name}.json", {k: r.to_dict() for k, r in results.items()}),
        "png": plot_curves(results, out / f"{name}.png", title=title),
    }
    if rad:
        paths["radii_png"] = plot_radius_histograms(results, out / f"{name}_radii.png", title=title)
    if margins is not None and len(margins):
        paths["margins_png"] = plot_margin_histogram(margins, out / f"{name}_margins.png")
    return paths
