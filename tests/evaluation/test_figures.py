"""Figures for a paper: one panel per attack with a line per method, mean +- sd bands over the
runs of a method (numbers checked by hand against the drawn artists), three visual cues per
method, PNG + SVG for every figure, one margin bar per multiple of Delta."""
import json
import math
import xml.etree.ElementTree as ET

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from amat_hooks.evaluation import EvalResult, save_result  # noqa: E402
from amat_hooks.evaluation.figures import (MAX_BARS, curves_figure, group_runs, margin_bars,  # noqa: E402
                                           margin_histogram_figure, mean_sd, plot_curves, plot_margin_histogram,
                                           plot_radius_histograms, plot_training_margins, runs_from_files)
from amat_hooks.evaluation.report import write_report  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def result(clean, pgd, worst, ifgsm=None, random=None) -> EvalResult:
    """ADI at clean and at levels 1 and 2 under each attack."""
    noisy = {"pgd": {1.0: {"ADI": pgd[0]}, 2.0: {"ADI": pgd[1]}},
             "worst": {1.0: {"ADI": worst[0]}, 2.0: {"ADI": worst[1]}}}
    if ifgsm is not None:
        noisy["ifgsm"] = {1.0: {"ADI": ifgsm[0]}, 2.0: {"ADI": ifgsm[1]}}
    return EvalResult(task="segmentation", metric="ADI", higher_is_better=True, levels=[1.0, 2.0],
                      clean={"ADI": clean}, noisy=noisy, batches=1, seconds=0.0, steps={"pgd": 10, "ifgsm": 5},
                      worst_of=["pgd", "ifgsm"] if ifgsm else ["pgd"],
                      random={} if random is None else {1.0: {"ADI": random[0]}, 2.0: {"ADI": random[1]}})


def seeds() -> dict[str, EvalResult]:
    # AMAT over 3 seeds: clean 0.8, 0.9, 1.0 (mean 0.9, sd 0.1); PGD at 1: 0.1, 0.3, 0.5 (mean 0.3,
    # sd 0.2); PGD at 2: 0.0, 0.3, 0.6 (mean 0.3, sd 0.3); worst = PGD, so the two coincide
    return {"STD": result(0.9, [0.5, 0.2], [0.5, 0.2], ifgsm=[0.6, 0.3]),
            "AMAT/seed0": result(0.8, [0.1, 0.0], [0.1, 0.0], ifgsm=[0.2, 0.1]),
            "AMAT/seed1": result(0.9, [0.3, 0.3], [0.3, 0.3], ifgsm=[0.4, 0.3]),
            "AMAT/seed2": result(1.0, [0.5, 0.6], [0.5, 0.6], ifgsm=[0.6, 0.5])}


def _ids(elem) -> list[str]:
    return [g.get("id") for g in elem.iter(SVG + "g") if g.get("id")]


def test_curves_png_and_svg_one_panel_per_attack_one_line_per_method(tmp_path):
    png = plot_curves(seeds(), tmp_path / "fig.png", title="toy")
    svg = png.with_suffix(".svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    root = ET.parse(svg).getroot()  # well-formed XML
    assert root.tag == SVG + "svg"
    panels = {g.get("id"): g for g in root.iter(SVG + "g") if (g.get("id") or "").startswith("panel-")}
    assert list(panels) == ["panel-pgd", "panel-ifgsm", "panel-worst"]  # the report's order
    for attack, g in panels.items():
        a = attack[len("panel-"):]
        curves = [i for i in _ids(g) if i.startswith("curve-")]
        assert curves == [f"curve-{a}-STD", f"curve-{a}-AMAT"]  # one line per method, not per seed
        assert [i for i in _ids(g) if i.startswith("band-")] == [f"band-{a}-AMAT"]  # STD has one run: no band
    everywhere = _ids(root)
    assert len(everywhere) == len(set(everywhere))  # the legend does not repeat the ids
    assert not list(tmp_path.glob(".*tmp*"))


def test_band_is_mean_plus_minus_sample_sd_computed_by_hand():
    fig = curves_figure(seeds())
    try:
        pgd = next(ax for ax in fig.axes if ax.get_gid() == "panel-pgd")
        line = next(ln for ln in pgd.get_lines() if ln.get_gid() == "curve-pgd-AMAT")
        assert list(line.get_xdata()) == [0.0, 1.0, 2.0]
        assert list(line.get_ydata()) == pytest.approx([0.9, 0.3, 0.3])
        assert line.get_label() == "AMAT (mean \u00b1 sd, 3 runs)"
        band = next(c for c in pgd.collections if c.get_gid() == "band-pgd-AMAT")
        verts = {(round(float(x), 9), round(float(y), 9)) for path in band.get_paths() for x, y in path.vertices}
        for x, mean, sd in ((0.0, 0.9, 0.1), (1.0, 0.3, 0.2), (2.0, 0.3, 0.3)):
            assert (x, round(mean - sd, 9)) in verts and (x, round(mean + sd, 9)) in verts
        ys = sorted(y for _, y in verts)
        assert ys[0] == pytest.approx(0.0) and ys[-1] == pytest.approx(1.0)  # nothing outside mean +- sd
        std = next(ln for ln in pgd.get_lines() if ln.get_gid() == "curve-pgd-STD")
        assert list(std.get_ydata()) == [0.9, 0.5, 0.2]  # a single run: its own numbers
    finally:
        plt.close(fig)


def test_methods_differ_in_colour_line_style_and_marker_so_coinciding_lines_show():
    same = {"PGD-twin": result(0.9, [0.5, 0.2], [0.5, 0.2]), "worst-twin": result(0.9, [0.5, 0.2], [0.5, 0.2]),
            "third": result(0.9, [0.5, 0.2], [0.5, 0.2])}
    fig = curves_figure(same)
    try:
        lines = [ln for ln in fig.axes[0].get_lines() if (ln.get_gid() or "").startswith("curve-")]
        assert len(lines) == 3 and all(list(ln.get_ydata()) == [0.9, 0.5, 0.2] for ln in lines)
        for prop in ("get_color", "get_linestyle", "get_marker"):
            assert len({getattr(ln, prop)() for ln in lines}) == 3, prop
    finally:
        plt.close(fig)


def test_random_noise_gets_its_own_panel_when_every_model_has_it():
    rs = {"A": result(0.9, [0.5, 0.2], [0.5, 0.2], random=[0.85, 0.8]),
          "B": result(0.8, [0.6, 0.4], [0.6, 0.4], random=[0.8, 0.7])}
    fig = curves_figure(rs)
    try:
        assert [ax.get_gid() for ax in fig.axes if ax.get_gid()] == ["panel-pgd", "panel-worst", "panel-random"]
        rnd = next(ax for ax in fig.axes if ax.get_gid() == "panel-random")
        assert [list(ln.get_ydata()) for ln in rnd.get_lines() if ln.get_gid()] == [[0.9, 0.85, 0.8], [0.8, 0.8, 0.7]]
    finally:
        plt.close(fig)


def test_runs_are_grouped_by_name_or_by_an_explicit_mapping(tmp_path):
    rs = seeds()
    assert {m: [n for n, _ in runs] for m, runs in group_runs(rs).items()} == {
        "STD": ["STD"], "AMAT": ["AMAT/seed0", "AMAT/seed1", "AMAT/seed2"]}
    explicit = group_runs(rs, {"low": ["AMAT/seed0", "AMAT/seed1"]})
    assert [n for n, _ in explicit["low"]] == ["AMAT/seed0", "AMAT/seed1"] and list(explicit) == [
        "STD", "low", "AMAT/seed2"]
    with pytest.raises(ValueError, match="names the result 'nope'"):
        group_runs(rs, {"x": ["nope"]})
    with pytest.raises(ValueError, match="is in 'a' and in 'b'"):
        group_runs(rs, {"a": ["STD"], "b": ["STD"]})
    assert mean_sd([[1.0, 2.0], [3.0, 6.0]]) == ([2.0, 4.0], [math.sqrt(2), math.sqrt(8)])
    # result files per method (amat eval's models/NAME.json) -> names the figures group
    files = {}
    for name, r in rs.items():
        path = tmp_path / f"{name.replace('/', '_')}.json"
        save_result(r, path)
        files.setdefault(name.split("/")[0], []).append(path)
    loaded = runs_from_files(files)
    assert list(loaded) == ["STD", "AMAT/AMAT_seed0", "AMAT/AMAT_seed1", "AMAT/AMAT_seed2"]
    assert loaded["AMAT/AMAT_seed2"].clean == {"ADI": 1.0}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs_from_files({"X": [tmp_path / "missing.json"]})


def test_write_report_draws_the_seed_bands_and_writes_svg_beside_every_png(tmp_path):
    paths = write_report(seeds(), tmp_path, name="rep", margins=[1.0, 2.0, 2.0])
    for key in ("png", "margins_png"):
        assert paths[key].suffix == ".png" and paths[key].read_bytes()[:4] == b"\x89PNG"
        ET.parse(paths[key].with_suffix(".svg"))
    assert "band-pgd-AMAT" in paths["png"].with_suffix(".svg").read_text()
    assert set(json.loads(paths["json"].read_text())) == set(seeds())  # every run kept in the data


def test_radius_and_training_margin_figures_come_as_png_and_svg(tmp_path):
    r = result(0.9, [0.5, 0.2], [0.5, 0.2])
    r.radius = {"radius": [0.5, 1.5, None, 2.5], "max_radius": 4.0, "threshold": 0.5, "relative": True,
                "steps": 10, "objectives": ["loss"]}
    png = plot_radius_histograms({"A": r}, tmp_path / "radii.png")
    assert png.is_file() and ET.parse(png.with_suffix(".svg")).getroot().tag == SVG + "svg"
    log = {"margin_mean": [1.0, 1.5], "margin_min": [1.0, 1.0], "margin_max": [1.0, 2.0], "xi": [0.3, 0.3]}
    png = plot_training_margins(log, tmp_path / "progress_amat.png")
    assert png.is_file() and ET.parse(png.with_suffix(".svg")).getroot().tag == SVG + "svg"


# -- the margin histogram ----------------------------------------------------------------------
def _bars(fig) -> list[tuple[float, float, float]]:
    """(centre, height, width) of every bar of the figure's one axes."""
    return [(p.get_x() + p.get_width() / 2, p.get_height(), p.get_width()) for p in fig.axes[0].patches]


def test_margin_histogram_one_bar_per_distinct_multiple_of_delta(tmp_path):
    delta = 0.5
    values = [0.5, 0.5, 1.0, 1.5, 1.5, 1.5, 3.0, 0.0]  # multiples 1, 1, 2, 3, 3, 3, 6, 0 of Delta
    fig = margin_histogram_figure(values, delta)
    try:
        bars = _bars(fig)
        assert len(bars) == 5  # distinct multiples: 0, 1, 2, 3, 6
        assert [c for c, _, _ in bars] == pytest.approx([0.0, 0.5, 1.0, 1.5, 3.0])  # centred on k * Delta
        assert [h for _, h, _ in bars] == [1, 2, 1, 3, 1]
        assert all(w == pytest.approx(0.8 * delta) for _, _, w in bars)  # gaps between the bars
    finally:
        plt.close(fig)
    # float noise from the margin update (2 * 0.1 is 0.2, 3 * 0.1 is 0.30000000000000004)
    assert margin_bars([0.1 * k for k in (1, 2, 3, 3)], 0.1)[1] == [1, 1, 2]
    # without Delta: one bar per distinct value as long as there are few
    assert margin_bars([1.0, 1.0, 3.0])[:2] == ([1.0, 3.0], [2, 1])
    png = plot_margin_histogram(values, tmp_path / "m.png", delta=delta)
    assert png.is_file() and png.with_suffix(".svg").is_file()


def test_margin_histogram_of_values_off_the_multiples_bins_centred_on_them():
    delta = 0.5
    values = [0.1, 0.3, 0.6, 0.74, 1.2, 2.01]  # the halving rule (line 12) leaves such values
    assert margin_bars(values, delta) is None
    fig = margin_histogram_figure(values, delta)
    try:
        bars = _bars(fig)
        # bins [(k - 0.5) Delta, (k + 0.5) Delta) for k = 0..4: 0.1 | 0.3 0.6 0.74 | 1.2 | - | 2.01
        assert [c for c, _, _ in bars] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
        assert [h for _, h, _ in bars] == [1, 3, 1, 0, 1]
    finally:
        plt.close(fig)
    many = [i / 997 * 100 for i in range(1000)]  # 200 multiples of Delta: binned automatically
    fig = margin_histogram_figure(many, delta)
    try:
        assert 1 < len(_bars(fig)) <= MAX_BARS and sum(h for _, h, _ in _bars(fig)) == 1000
    finally:
        plt.close(fig)
