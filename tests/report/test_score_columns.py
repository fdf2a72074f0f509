"""Score columns declare what they mean (``iqadef.ScoreColumn``); the run records it in run.json and the
report reads it there: the main table, the better side, the rankings and the key findings."""

from __future__ import annotations

import json

import change_score
import numpy as np
import pandas as pd
import pytest
import shifted_metric
import toy_plugins

from iqadef import ConfigError, ImageScore, ScoreColumn
from iqadef.analysis.scores import aggregate, recorded_columns
from iqadef.config.registry import load_run_config
from iqadef.core import columns
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid
from iqadef.report import key_findings, ranking_table, write_report
from iqadef.report.tables import key_scores, with_ci


def test_a_third_party_key_column_reaches_the_main_table_with_its_direction(tmp_path, image_dir):
    registry = InstalledPlugins(extra=[toy_plugins, shifted_metric, change_score], entry_points=False)
    path = tmp_path / "run.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: {tmp_path / 'run'}\nbatch_size: 6\nexamples: 0\n"
        f"metrics: [toy-metric]\nattacks: [toy-sign]\ndefences: [no-defence, toy-blur]\n"
    )
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert info["score_columns"]["defence_change"] == {
        "name": "defence_change",
        "direction": "lower",
        "aggregate": "mean",
        "key": True,
        "ranking": "interval",
        "title": "change of x",
        "role": None,
        "plugin": "defence-change",
        "order": 100,
    }
    md = write_report(summary.run_dir, plugins=registry)["markdown"].read_text()
    key_section = md.split("## Key scores")[1].split("## Failed cells")[0]
    header = next(line for line in key_section.splitlines() if line.startswith("| metric"))
    assert header.split(" | ")[-1] == "defence_change |"  # after the built-ins' key columns (report_order 100)
    assert "Lower is better: gain, gain_clean, " in key_section and key_section.count("change of x") == 1
    ranking_header = next(
        line for line in md.split("## Defence ranking per metric")[1].splitlines() if line.startswith("| rank")
    )
    assert " | quality_score | similarity_score | defence_change | n_images |" in ranking_header
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    ranking = ranking_table(df, info, metric="toy-metric").set_index("defence")
    assert ranking.loc["no-defence", "defence_change"] == 0.0 < ranking.loc["toy-blur", "defence_change"]
    assert {"defence_change_ci_low", "defence_change_ci_high"} <= set(ranking.columns)


def _two_defences() -> pd.DataFrame:
    rows = []
    for i in range(6):
        for defence, gain, damage in (("sharp", 0.1, 0.9), ("soft", 0.2, 0.1)):
            rows.append(
                {
                    "image": f"i{i}",
                    "metric": "m",
                    "attack": "a",
                    "defence": defence,
                    "status": "ok",
                    "f_clean": 1.0,
                    "f_adv": 2.0,
                    "f_def_clean": 1.0,
                    "f_def_adv": 1.0 + gain + 0.01 * i,
                    "damage": damage + 0.01 * i,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("direction, best", [("lower", "soft"), ("higher", "sharp")])
def test_a_declared_direction_decides_the_best_defences(direction, best):
    info = {
        "metrics": {"m": {"range": [0, 4]}},
        "score_columns": recorded_columns_of(ScoreColumn("damage", direction, key=True, ranking="interval")),
    }
    table = ranking_table(_two_defences(), info, metric="m")
    assert list(table["defence"]) == ["sharp", "soft"]  # the ranking itself is by normalised gain
    assert table.columns[6:9].tolist() == ["damage", "damage_ci_low", "damage_ci_high"]
    (finding,) = key_findings({"m": table}, run_info=info)
    assert [d for d, *_ in finding["by_quality"]] == [best, "sharp" if best == "soft" else "soft"]


def recorded_columns_of(*declared: ScoreColumn) -> dict:
    plugin = type("Declared", (ImageScore,), {"name": "declared", "columns": declared})
    return columns.record([plugin])


def test_a_column_without_a_direction_names_no_best_defences():
    info = {"score_columns": recorded_columns_of(ScoreColumn("damage", None, ranking="interval"))}
    (finding,) = key_findings({"m": ranking_table(_two_defences(), info, metric="m")}, run_info=info)
    assert finding["by_quality"] == []


def test_a_bad_direction_is_one_clear_error():
    with pytest.raises(
        ConfigError,
        match=r"^score column 'damage': direction 'up' is not allowed; expected one "
        r"of 'higher', 'lower', None$",
    ):
        ScoreColumn("damage", "up")
    with pytest.raises(ConfigError, match=r"score plugin Twice: score column\(s\) \['x'\] declared twice"):
        type("Twice", (ImageScore,), {"name": "twice", "columns": (ScoreColumn("x"), ScoreColumn("x"))})
    info = {"score_columns": {"damage": {"name": "damage", "direction": "down"}}}
    with pytest.raises(
        ConfigError,
        match=r"^run.json: score_columns.damage: score column 'damage': direction "
        r"'down' is not allowed",
    ):
        ranking_table(_two_defences(), info)


def test_the_builtins_declare_what_the_report_showed_before():
    """A run that recorded the built-ins' columns and one written before they were recorded show the same
    main table, rankings and findings."""
    recorded = columns.read({"score_columns": recorded_columns()})
    legacy = columns.read({})
    assert columns.key_columns(recorded) == columns.key_columns(legacy)
    assert columns.ranking_columns(recorded) == columns.ranking_columns(legacy)
    assert columns.finding_column(recorded) == columns.finding_column(legacy) == legacy["quality_score"]
    assert {n: c.direction for n, c in recorded.items() if n in legacy} == {n: c.direction for n, c in legacy.items()}


def test_a_median_column_is_summed_up_by_its_median():
    df = _two_defences()
    info = {"score_columns": recorded_columns_of(ScoreColumn("damage", "lower", aggregate="median", key=True))}
    agg = aggregate(df, info, summaries=[]).set_index("defence")
    assert "damage_mean" not in agg.columns and "f_clean_mean" in agg.columns
    expected = np.median(df.loc[df["defence"] == "soft", "damage"])
    assert agg.loc["soft", "damage_median"] == pytest.approx(expected)
    assert agg.loc["soft", "damage_ci_low"] <= expected <= agg.loc["soft", "damage_ci_high"]
    shown = key_scores(with_ci(agg.reset_index()), info)
    assert shown["damage"].iloc[0].startswith(f"{agg['damage_median'].iloc[0]:.4g} [")
