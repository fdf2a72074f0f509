"""The report answers the question: per attack the best defence and its quality cost, the gain-quality
trade-off with its Pareto front, geometric defences marked, a certified section, and figures that line up
(Fig. 3 and 4 in one column order, legible heatmap numbers, Fig. 5 says what it shows)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps

from iqadef.config.registry import load_run_config
from iqadef.core.smoothing import order_statistic_ranks, percentile_shift
from iqadef.execute import run_grid
from iqadef.report import gain_matrix, srocc_matrix, write_report
from iqadef.report.certified import certified_table, sigma_to_cover
from iqadef.report.figures import cell_font_size, new_figure, same_columns, text_colour
from iqadef.report.glance import best_per_attack, geometric_defences, pareto_front, tradeoff_points
from iqadef.report.tables import ranking_table

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 3
seed: 3
metrics: {metrics}
attacks: [toy-sign]
defences: [no-defence, toy-blur, flip]
certified:
  - {{name: median-smoothing, n: 24, sigma: 0.05, eps: 0.05, batch: 16}}
"""


def _run(tmp, images, registry, metrics: str = "[toy-metric]"):
    path = tmp / "grid.yaml"
    path.write_text(GRID.format(images=images, output=tmp / "run", metrics=metrics))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    assert summary.failed == 0
    written = write_report(summary.run_dir, plugins=registry)
    return summary.run_dir, written


@pytest.fixture(scope="module")
def report(tmp_path_factory, toy_registry):
    from .test_report_browser import _images

    tmp = tmp_path_factory.mktemp("answers")
    images = tmp / "images"
    images.mkdir()
    _images(images)
    run_dir, written = _run(tmp, images, toy_registry)
    df = pd.read_parquet(run_dir / "results.parquet")
    info = json.loads((run_dir / "run.json").read_text())
    return {
        "dir": run_dir,
        "written": written,
        "df": df,
        "info": info,
        "html": written["html"].read_text(),
        "md": written["markdown"].read_text(),
        "images": images,
        "tmp": tmp,
    }


# -- item 6: the best defence per attack, its quality cost, the trade-off, geometric defences -------------------
def test_the_best_defence_per_attack_is_the_lowest_normalised_gain_with_its_quality_against_no_defence(report):
    df, info = report["df"], report["info"]
    best = best_per_attack(df, info, "toy-metric").set_index("attack").loc["toy-sign"]
    ok = df[(df["status"] == "ok") & (df["metric"] == "toy-metric") & (df["attack"] == "toy-sign")]
    norm = (ok["f_clean"] - ok["f_def_adv"]).abs() / 1.0  # toy-metric's range is 0..1
    by_defence = norm.groupby(ok["defence"]).mean()
    quality = ok.groupby("defence")["quality_score"].mean()
    assert best["best_defence"] == by_defence.idxmin()
    assert best["norm_gain"] == pytest.approx(by_defence.min())
    assert best["norm_gain_no_defence"] == pytest.approx(by_defence["no-defence"])
    assert best["quality_change"] == pytest.approx(quality[best["best_defence"]] - quality["no-defence"])
    # the page shows it above the key findings, with the trade-off figure embedded
    html = report["html"]
    assert html.index("id='glance'") < html.index("id='findings'") < html.index("id='rankings'")
    glance = html[html.index("id='glance'") : html.index("id='findings'")]
    assert f"<td>{best['best_defence']}</td>" in glance and "<th>quality score − no-defence" in glance
    assert "<img class='fig tradeoff'" in glance and "src='data:image/png;base64," in glance
    assert any(k.startswith("figure:tradeoff_toy-metric") for k in report["written"])
    assert "## Best defence per attack, and what it costs" in report["md"]
    assert report["md"].index("Best defence per attack") < report["md"].index("## Key findings")


def test_no_defence_is_not_among_the_highest_quality(report):
    line = next(line for line in report["md"].splitlines() if line.startswith("Highest quality score"))
    named = line.split("): ", 1)[1]
    assert "toy-blur" in named and "no-defence" not in named and "median-smoothing" not in named
    findings = report["html"][report["html"].index("<section id='findings'>") :]
    findings = findings[findings.index("highest quality score</strong>") : findings.index("</section>")]
    assert "toy-blur" in findings and "<li>no-defence" not in findings and "<li>median-smoothing" not in findings


def test_geometric_defences_are_declared_by_the_plugin_and_marked(report):
    info = report["info"]
    assert info["defence_plugins"]["flip"] == {"name": "flip", "geometric": True}
    assert info["defence_plugins"]["toy-blur"]["geometric"] is False
    assert geometric_defences(info["defences"], info) == ["flip"]
    assert "flip† moves pixels" not in report["html"]  # the note, once, beside the table
    assert "moves pixels (flip, rotate, crop" in report["html"] and "moves pixels" in report["md"]


def test_a_geometric_best_defence_is_marked_in_the_table(report, toy_registry):
    """flip made best by hand: its name carries the mark, and its quality never puts it on the front."""
    from iqadef.report.figures import ReportFigures
    from iqadef.report.page import glance_sections

    df, info = report["df"].copy(), report["info"]
    flip = df["defence"] == "flip"
    df.loc[flip, "f_def_adv"] = df.loc[flip, "f_clean"]  # flip restores every score
    sections = glance_sections(df, info, ReportFigures(), data_uris=False)
    assert sections[0]["best"]["best defence"].tolist() == ["flip†"]
    points = tradeoff_points(ranking_table(df, info, metric="toy-metric"), info).set_index("defence")
    assert points.loc["flip", "geometric"] and not points.loc["flip", "pareto"]
    assert points.loc["no-defence", "baseline"]


def test_pareto_front():
    gain = np.array([0.1, 0.2, 0.05, 0.3, np.nan, 0.2])
    quality = np.array([0.5, 0.9, 0.2, 0.95, 1.0, 0.8])
    # 0.05/0.2, 0.1/0.5, 0.2/0.9, 0.3/0.95 are not beaten; 0.2/0.8 is beaten by 0.2/0.9; NaN is never on it
    assert pareto_front(gain, quality).tolist() == [2, 0, 1, 3]
    assert pareto_front(np.array([0.1, 0.1]), np.array([0.5, 0.5])).tolist() == [0, 1]  # ties both stay


# -- item 7: the certified section ---------------------------------------------------------------------------
def test_certified_section_counts_coverage_and_says_what_would_cover_the_attacks(report):
    df, info = report["df"], report["info"]
    table = certified_table(df, info)
    row = table.iloc[0]
    cells = df[df["defence"].str.startswith("median-smoothing") & (df["status"] == "ok")]
    assert row["cells"] == len(cells) and row["covered"] == int((cells["adv_l2"] <= 0.05).sum())
    assert row["adv_l2_max"] == pytest.approx(cells["adv_l2"].max())
    clean = cells.drop_duplicates("image")
    assert row["smoothing_cost_norm"] == pytest.approx((clean["f_def_clean"] - clean["f_clean"]).abs().mean())
    outside = ((clean["f_def_clean"] < 0) | (clean["f_def_clean"] > 1)).mean()
    assert row["fs_outside_share"] == pytest.approx(outside)
    html = report["html"]
    section = html[html.index("<section id='certified'>") :]
    section = section[: section.index("</section>")]
    assert f"covers {row['covered']} of {row['cells']} cells" in section
    assert f"needs sigma &gt;= {row['sigma_to_cover']:.4g} at n = 24" in section
    if outside > 0:
        assert "leaves the metric&#x27;s range 0..1" in section
    assert "<table" in section and "## Certified defences" in report["md"]
    assert "href='#certified'" in html


@pytest.mark.parametrize("n,alpha", [(24, 0.001), (100, 0.001), (1000, 0.01)])
def test_sigma_to_cover_is_the_smallest_sigma_whose_median_certificate_exists(n, alpha):
    eps = 0.7
    sigma = sigma_to_cover(eps, n, alpha, "interval")

    def exists(s):
        low, _ = order_statistic_ranks(n, *percentile_shift(eps, s), alpha)
        return low is not None

    assert exists(sigma * 1.01) and not exists(sigma * 0.97)


def test_sigma_to_cover_for_a_radius_certificate_reaches_eps():
    from scipy import stats

    n, alpha, eps = 1000, 0.001, 0.5
    sigma = sigma_to_cover(eps, n, alpha, "radius")
    best = stats.beta.ppf(alpha, n, 1)  # Clopper-Pearson lower bound with every copy in one class
    assert sigma * stats.norm.ppf(best) == pytest.approx(eps)
    assert math.isnan(sigma_to_cover(math.nan, n, alpha, "radius"))


# -- item 8: figures and tables ------------------------------------------------------------------------------
def test_figure_4_has_figure_3s_column_order(report):
    df = report["df"]
    gains = gain_matrix(df, "toy-metric")
    sroccs = same_columns(srocc_matrix(df, "toy-metric", "f_clean"), gains)
    assert list(sroccs.columns) == list(gains.columns)
    assert list(srocc_matrix(df, "toy-metric", "f_clean").columns) != list(gains.columns) or len(gains.columns) < 3


def test_heatmap_numbers_contrast_with_their_cell_and_grow_with_it():
    cmap = colormaps["RdYlGn_r"]
    assert text_colour(cmap(0.0)) == "white" and text_colour(cmap(0.5)) == "black"  # dark green, yellow
    assert text_colour((0.0, 0.0, 0.0, 1.0)) == "white" and text_colour((1.0, 1.0, 1.0, 1.0)) == "black"
    small, large = new_figure(4, 2.5), new_figure(16, 8)
    assert cell_font_size(small, 12, 16) < cell_font_size(large, 2, 3) <= 10
    assert cell_font_size(new_figure(15.4, 6.5), 11, 16) >= 8  # the default grid's heatmap: legible


def test_figure_5_says_which_defences_it_shows_and_the_pooled_ranking_needs_two_metrics(report, toy_registry):
    html, md = report["html"], report["md"]
    fig5 = html[html.index("<section id='fig5'>") :]
    assert "the 8 with the lowest mean gain" in fig5[: fig5.index("</section>")]
    assert "at most the 8 with the lowest mean gain" in md
    assert "ranking-pooled" not in html and "All metrics pooled" not in md  # one metric: nothing to pool
    tmp = report["tmp"] / "two"
    tmp.mkdir()
    _, written = _run(tmp, report["images"], toy_registry, metrics="[toy-metric, toy-shifted]")
    assert "id='ranking-pooled'" in written["html"].read_text()
    assert "### All metrics pooled" in written["markdown"].read_text()


def test_geometric_is_declared_by_flip_rotate_crop_and_inherited_by_a_composition(tmp_path, image_dir, toy_registry):
    from iqadef.plan.grid import run_info

    path = tmp_path / "g.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
        f"defences: [no-defence, toy-blur, flip, random-rotate, random-crop, [toy-blur, flip], "
        f"[toy-blur, toy-blur]]\n"
    )
    config = load_run_config(path, plugins=toy_registry)
    info = run_info(config, config.open_dataset())
    flags = {label: entry["geometric"] for label, entry in info["defence_plugins"].items()}
    assert [flags[d] for d in info["defences"]] == [False, False, True, True, True, True, False]
    assert info["defence_plugins"]["no-defence"]["name"] == "no-defence"


def test_the_geometric_flag_is_described(toy_registry):
    described = {
        name: toy_registry.get("defences", name).describe()["geometric"]
        for name in ("flip", "random-rotate", "random-crop", "jpeg", "median-blur", "resize", "no-defence")
    }
    assert described == {
        "flip": True,
        "random-rotate": True,
        "random-crop": True,
        "jpeg": False,
        "median-blur": False,
        "resize": False,
        "no-defence": False,
    }


def test_a_run_written_before_run_json_named_its_defences_plugins_still_marks_flip(report, toy_registry, tmp_path):
    import shutil

    run_dir = tmp_path / "old"
    shutil.copytree(report["dir"], run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    del info["defence_plugins"]
    (run_dir / "run.json").write_text(json.dumps(info))
    html = write_report(run_dir, plugins=toy_registry)["html"].read_text()
    assert "moves pixels (flip, rotate, crop" in html
    highest = html[html.index("highest quality score</strong>") :]
    assert "<li>no-defence" not in highest[: highest.index("</section>")]


def test_the_drawn_figures_3_and_4_share_their_columns(report, monkeypatch):
    from iqadef.report import figures

    drawn = []
    real = figures.heatmap
    monkeypatch.setattr(
        figures, "heatmap", lambda matrix, *a, **k: drawn.append(list(matrix.columns)) or real(matrix, *a, **k)
    )
    write_report(report["dir"])
    assert len(drawn) == 2 and drawn[0] == drawn[1]
