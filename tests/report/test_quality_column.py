"""The glance (best defence per attack and its quality cost) and the gain-quality trade-off show the quality
column the run declares (``iqadef.core.columns.finding_column``), on its declared better side, under its
title; a run that declares none gets neither quality nor trade-off figure, and no error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from iqadef.core.columns import ScoreColumn
from iqadef.report import figures as report_figures
from iqadef.report import ranking_table, write_report
from iqadef.report.glance import best_per_attack, tradeoff_points

#: defence -> (normalised gain, my_quality); no-defence is the attacked image
CELLS = {
    "no-defence": (0.4, 0.5),
    "d1": (0.1, 0.2),
    "d2": (0.2, 0.6),
    "d3": (0.3, 0.9),
    "d4": (0.25, 0.3),
}


def _table() -> pd.DataFrame:
    rows = []
    for i in range(6):
        for defence, (gain, quality) in CELLS.items():
            rows.append(
                {
                    "image": f"i{i}",
                    "metric": "m",
                    "attack": "a",
                    "defence": defence,
                    "status": "ok",
                    "f_clean": 0.5,
                    "f_adv": 0.9,
                    "f_def_clean": 0.5,
                    "f_def_adv": 0.5 + gain + 0.001 * i,
                    "my_quality": quality + 0.001 * i,
                    # the built-in plugin's column, present but not declared: the report must not use it
                    "quality_score": 1.0 - quality,
                    "image_path": "",
                    "adv_path": "",
                    "example_path": "",
                }
            )
    return pd.DataFrame(rows)


def _info(*declared: ScoreColumn) -> dict:
    return {
        "metrics": {"m": {"name": "m", "range": [0.0, 1.0], "higher_is_better": True}},
        "attacks": ["a"],
        "defences": list(CELLS),
        "score_columns": {c.name: c.to_json("my-plugin") for c in declared},
    }


def _quality(direction: str) -> ScoreColumn:
    return ScoreColumn("my_quality", direction, key=True, ranking="interval", title="my quality")


def _write(tmp_path, info: dict) -> dict:
    _table().to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "run.json").write_text(json.dumps(info))
    return write_report(tmp_path)


@pytest.fixture
def xlabels(monkeypatch) -> list[tuple[str, str]]:
    """(x label, title) of every trade-off figure drawn."""
    seen: list[tuple[str, str]] = []
    save = report_figures.save_figure

    def spy(fig, path, files):  # noqa: ANN001, ANN202
        if path.name.startswith("tradeoff"):
            ax = fig.axes[0]
            seen.append((ax.get_xlabel(), ax.get_title()))
        return save(fig, path, files)

    monkeypatch.setattr(report_figures, "save_figure", spy)
    return seen


def test_a_third_party_quality_column_gets_the_glance_and_the_tradeoff(tmp_path, xlabels):
    info = _info(_quality("higher"))
    df = _table()
    best = best_per_attack(df, info, "m").iloc[0]
    assert best["best_defence"] == "d1"
    assert best["quality"] == pytest.approx(0.2025)  # my_quality, not the undeclared quality_score
    assert best["quality_change"] == pytest.approx(0.2 - 0.5)
    points = tradeoff_points(ranking_table(df, info, metric="m"), info).set_index("defence")
    assert sorted(points.index[points["pareto"]]) == ["d1", "d2", "d3"]  # d4 and no-defence are beaten

    written = _write(tmp_path, info)
    assert any(k.startswith("figure:tradeoff_m") for k in written)
    assert xlabels == [
        ("my quality  (higher is better)", "Gain against quality (m): best defences at the bottom right")
    ]
    html, md = written["html"].read_text(), written["markdown"].read_text()
    glance = html[html.index("id='glance'") : html.index("id='findings'")]
    assert "<th>my quality</th>" in glance and "<th>my quality − no-defence's</th>" in glance
    assert "<img class='fig tradeoff'" in glance and "quality score" not in glance
    assert "| my quality | no-defence's my quality | my quality − no-defence's |" in md
    findings = html[html.index("<section id='findings'>") : html.index("<section id='rankings'>")]
    assert "<strong>highest my quality</strong><ol><li>d3:" in findings


def test_a_lower_is_better_quality_column_flips_the_front_and_the_best(tmp_path, xlabels):
    info = _info(_quality("lower"))
    points = tradeoff_points(ranking_table(_table(), info, metric="m"), info).set_index("defence")
    assert list(points.index[points["pareto"]]) == ["d1"]  # lowest gain and lowest my_quality: beats every other

    written = _write(tmp_path, info)
    assert xlabels == [("my quality  (lower is better)", "Gain against quality (m): best defences at the bottom left")]
    html, md = written["html"].read_text(), written["markdown"].read_text()
    assert "a negative change means the defence" in html
    assert "Lowest my quality (no-defence and certified defences left out" in md
    findings = html[html.index("<section id='findings'>") : html.index("<section id='rankings'>")]
    assert "<strong>lowest my quality</strong><ol><li>d1:" in findings


def test_a_run_without_a_quality_column_has_no_tradeoff_and_no_quality(tmp_path, xlabels):
    info = _info(ScoreColumn("my_quality", "higher", key=True))  # no ranking: not the findings' column
    best = best_per_attack(_table(), info, "m")
    assert list(best.columns) == ["attack", "best_defence", "norm_gain", "norm_gain_no_defence", "n_images"]
    assert tradeoff_points(ranking_table(_table(), info, metric="m"), info).empty

    written = _write(tmp_path, info)
    assert not any(k.startswith("figure:tradeoff") for k in written) and xlabels == []
    html, md = written["html"].read_text(), written["markdown"].read_text()
    glance = html[html.index("id='glance'") : html.index("id='findings'")]
    assert "<td>d1</td>" in glance and "quality −" not in glance and "<img class='fig tradeoff'" not in glance
    assert "The run declares no quality column" in glance
    assert "the run declares no quality column" in md and "Highest" not in md
    assert np.isfinite(pd.read_csv(tmp_path / "summary.csv")["f_clean_mean"]).all()
