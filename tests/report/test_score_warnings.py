"""Bug 2 of issue 17: a metric whose scores reach 0 or go below makes the paper's gain negative or explode.

The gain column stays as the reference computes it; the run and the report warn, and the rankings use the
range-normalised gain |f(x) - f(D(x_a))| / (high - low), valid for every metric.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from iqadef.analysis.scores import ScoreWarning, normalised_gain, score_warnings
from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.report import ranking_table, write_report

TINY = {"tiny-iqa": {"name": "tiny-iqa", "range": [-6.0, 86.0], "higher_is_better": True}}


def test_a_range_below_zero_warns_before_any_cell_and_a_range_from_zero_does_not():
    lines = score_warnings(TINY)
    assert len(lines) == 1 and lines[0].startswith("metric tiny-iqa: its range (-6, 86) goes below 0")
    assert "range-normalised gain" in lines[0] and "docs/scores.md" in lines[0]
    assert score_warnings({"spaq": {"range": [0, 100]}, "lin": {"range": [0.2, 1]}}) == []


def test_the_table_adds_how_many_clean_scores_are_at_or_below_zero_or_near_it():
    df = pd.DataFrame(
        {
            "image": ["a", "a", "b", "c", "d"],
            "metric": "m",
            "status": "ok",
            "f_clean": [-2.0, -2.0, 0.0, 0.5, 50.0],
            "f_def_adv": 1.0,
        }
    )
    (line,) = score_warnings({"m": {"range": [0, 100]}}, df)
    assert "2 of 4 images have a clean score f(x) <= 0" in line  # "a" counts once, "b" is exactly 0
    assert "1 of 4 images have f(x) within 1% of the range above 0" in line  # 0.5 < 1
    assert score_warnings({"m": {"range": [0, 100]}}, df[df["image"] == "d"]) == []


def _cells(f_clean, deviations):
    rows = []
    for defence, dev in deviations.items():
        for i, f_x in enumerate(f_clean):
            for attack in ("a1", "a2"):
                rows.append(
                    {
                        "image": f"i{i}",
                        "metric": "tiny-iqa",
                        "attack": attack,
                        "defence": defence,
                        "status": "ok",
                        "f_clean": f_x,
                        "f_adv": f_x + 10,
                        "f_def_clean": f_x,
                        "f_def_adv": f_x + dev[i],
                    }
                )
    return pd.DataFrame(rows)


def test_ranking_by_normalised_gain_is_not_fooled_by_negative_clean_scores():
    f_clean = [-3.0, -1.0, -2.0, -4.0]  # tiny-iqa's scores can be negative
    df = _cells(f_clean, {"no-defence": [10.0, 10.0, 10.0, 10.0], "good": [1.0, 0.5, 1.5, 1.0]})
    paper_gain = (df["f_clean"] - df["f_def_adv"]).abs() / df["f_clean"]
    by_paper = paper_gain.groupby(df["defence"]).mean().sort_values()
    assert list(by_paper.index) == ["no-defence", "good"]  # the bug: the attacked score "wins"
    table = ranking_table(df, {"metrics": TINY})
    assert list(table["defence"]) == ["good", "no-defence"]
    good = table.iloc[0]
    assert good["norm_gain"] == pytest.approx(np.mean([1.0, 0.5, 1.5, 1.0]) / 92)
    assert good["norm_gain_ci_low"] <= good["norm_gain"] <= good["norm_gain_ci_high"]
    assert good["gain"] == pytest.approx(paper_gain[df["defence"] == "good"].mean())  # the reference's column
    np.testing.assert_allclose(normalised_gain([-3.0], [7.0], 92.0), [10 / 92])


def test_the_run_warns_and_the_report_says_so(tmp_path, image_dir, toy_registry):
    registry = tmp_path / "shifted.yaml"
    registry.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: {tmp_path / 'run'}\nbatch_size: 6\n"
        f"examples: 0\nmetrics: [toy-shifted]\nattacks: [toy-sign]\ndefences: [no-defence, toy-blur]\n"
    )
    config = load_run_config(registry, plugins=toy_registry)
    with pytest.warns(ScoreWarning, match=r"metric toy-shifted: its range \(-1, 1\) goes below 0"):
        summary = run_grid(config, plugins=toy_registry, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScoreWarning)  # the report says it on the page, it does not warn again
        written = write_report(summary.run_dir)
    page, md = written["html"].read_text(), written["markdown"].read_text()
    info = json.loads((summary.run_dir / "run.json").read_text())
    (expected,) = score_warnings(info["metrics"], pd.read_parquet(summary.run_dir / "results.parquet"))
    assert "images have a clean score f(x) &lt;= 0" in page and f"> **Warning:** {expected}" in md


def test_the_cli_prints_a_score_warning_as_one_line(capsys):
    from iqadef.cli import _show_warning

    _show_warning(ScoreWarning("metric m: its range (-1, 1) goes below 0"), ScoreWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err == "warning: metric m: its range (-1, 1) goes below 0\n"
