"""The console summary of `iqadef run` ranks defences as the report does (normalised gain), wide or narrow."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
from toy_plugins import small_grid_config

import iqadef.cli as cli
from iqadef.report.files import load_results
from iqadef.report.tables import ranking_table, report_tables

# tiny-iqa-like range -6..86: an image scored 0.5 makes the paper's gain explode for a defence that is off
# by 1 there, so the paper's gain ranks `drifts` (off by 20 on the image scored 80) first; the report does not.
CELLS = [  # image, f_clean, defence, attack, f_def_adv
    ("a.png", 0.5, "steady", "fgsm", 1.5),
    ("b.png", 80.0, "steady", "fgsm", 79.0),
    ("a.png", 0.5, "steady", "pgd", 1.7),
    ("b.png", 80.0, "steady", "pgd", 79.0),
    ("a.png", 0.5, "drifts", "fgsm", 0.5),
    ("b.png", 80.0, "drifts", "fgsm", 60.0),
    ("a.png", 0.5, "drifts", "pgd", 0.5),
    ("b.png", 80.0, "drifts", "pgd", 50.0),
]


def _run_dir(tmp_path):
    df = pd.DataFrame(
        [
            {"image": i, "metric": "tiny", "attack": a, "defence": d, "status": "ok", "f_clean": fc, "f_def_adv": fd}
            for i, fc, d, a, fd in CELLS
        ]
    )
    df.to_parquet(tmp_path / "results.parquet")
    info = {
        "metrics": {"tiny": {"name": "tiny", "range": [-6, 86], "higher_is_better": True}},
        "attacks": ["fgsm", "pgd"],
        "defences": ["steady", "drifts"],
    }
    (tmp_path / "run.json").write_text(json.dumps(info))
    return df, info


def _summary(run_dir, table):
    return SimpleNamespace(
        run_dir=run_dir,
        table=table,
        verdict=None,
        total=len(table),
        computed=len(table),
        skipped=0,
        failed=0,
        seconds=1.0,
        files={},
        other_cells=0,
    )


def _grid_rows(out: str) -> list[list[str]]:
    """The body rows of the printed grid tables, as their cells."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    return [r for r in rows if r and r[0] not in ("defence \\ attack", "")]


def test_wide_summary_ranks_like_the_report_with_the_paper_gain_beside(tmp_path, monkeypatch, capsys):
    df, info = _run_dir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    cli._print_summary(_summary(tmp_path, df))
    out = capsys.readouterr().out
    assert "mean normalised gain" in out and "the report's ranking" in out
    header = next(line for line in out.splitlines() if "defence \\ attack" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["defence \\ attack", "fgsm", "pgd", "mean", "paper gain"]
    rows = _grid_rows(out)
    report = report_tables(df, info).rankings["tiny"]
    assert [r[0] for r in rows] == list(report["defence"]) == ["steady", "drifts"]
    steady = rows[0]
    assert steady[1:] == [
        f"{1 / 92:.3f}",
        f"{(1 + 1.2) / 2 / 92:.3f}",
        f"{report['norm_gain'][0]:.3f}",
        f"{report['gain'][0]:.3f}",
    ]
    assert max(len(line) for line in out.splitlines()) <= 200


def test_narrow_summary_is_one_line_per_defence_within_80_columns(tmp_path, monkeypatch, capsys):
    df, info = _run_dir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    cli._print_summary(_summary(tmp_path, df))
    out = capsys.readouterr().out
    assert "│" not in out and "defence \\ attack" not in out  # no grid
    assert max(len(line) for line in out.splitlines()) <= 80
    lines = [line for line in out.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert [line.split()[1] for line in lines] == list(ranking_table(df, info, metric="tiny")["defence"])
    assert lines[1].split()[2] == f"{(20 + 30) / 2 / 2 / 92:.3f}"
    assert "best fgsm" in lines[1] and "worst pgd" in lines[1]


def test_run_summary_order_equals_the_report_ranking(tmp_path, image_dir, toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    monkeypatch.setenv("COLUMNS", "200")
    small_grid_config(tmp_path, image_dir, toy_registry, "run")
    assert cli.main(["run", str(tmp_path / "run.yaml"), "--no-report", "--no-progress"]) == 0
    rows = _grid_rows(capsys.readouterr().out)
    df, info = load_results(tmp_path / "run")
    ranking = ranking_table(df, info, metric=df["metric"].iloc[0])
    assert len(rows) == 2 and [r[0] for r in rows] == list(ranking["defence"])
    assert [r[-2] for r in rows] == [f"{v:.3f}" for v in ranking["norm_gain"]]
