"""The report and the verdict read the columns they need by their declared role (``ScoreColumn.role``,
:data:`iqadef.core.columns.ROLES`), not by the built-in ``full-reference`` plugin's column names: a
third-party column with the role drives them, a run without one degrades as without the plugin."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from iqadef import ImageScore, ScoreColumn
from iqadef.analysis import verdict as V
from iqadef.core import columns
from iqadef.report import figures as report_figures
from iqadef.report.figures import ImageLocator
from iqadef.report.files import ReportFiles
from iqadef.report.page import comparison_data

INFO = {"metrics": {"m": {"name": "m", "range": [0.0, 1.0], "higher_is_better": True}}}


def _declared(*declared: ScoreColumn, name: str = "my-plugin") -> dict:
    plugin = type("Declared", (ImageScore,), {"name": name, "columns": declared})
    return {**INFO, "score_columns": columns.record([plugin])}


def _table() -> pd.DataFrame:
    """Two defences over 8 images; ``my_visibility`` is a third-party SSIM(x, x_a), ``ssim_x_xa`` is absent."""
    rows = []
    for i in range(8):
        for defence, gain in (("d1", 0.1), ("d2", 0.3)):
            rows.append(
                {
                    "image": f"i{i}",
                    "metric": "m",
                    "attack": "a",
                    "defence": defence,
                    "status": "ok",
                    "adaptive": "none",
                    "f_clean": 0.5,
                    "f_adv": 0.9,
                    "f_def_clean": 0.5,
                    "f_def_adv": 0.5 + gain * (1 + i / 8),
                    "my_visibility": 0.5 + i / 16,
                    "my_psnr": 30.0 + i,
                    "my_gain": 0.25,
                    "image_path": "",
                    "adv_path": "",
                    "example_path": "",
                }
            )
    return pd.DataFrame(rows)


def _ssim_panel(monkeypatch, tmp_path, run_info) -> pd.DataFrame:
    """The table the gain-bins figure draws in its SSIM(x, x_a) panel."""
    drawn = {}
    monkeypatch.setattr(report_figures, "_lines", lambda ax, table, xlabel: drawn.setdefault(xlabel, table))
    report_figures.draw_figures(_table(), tmp_path, pd.DataFrame(), False, ReportFiles(tmp_path), run_info=run_info)
    return drawn["SSIM(x, x_a) bin"]


def test_a_third_party_column_with_the_attack_ssim_role_drives_the_gain_bins(monkeypatch, tmp_path):
    info = _declared(ScoreColumn("my_visibility", "higher", role="attack_ssim"))
    panel = _ssim_panel(monkeypatch, tmp_path, info)
    assert list(panel.columns) == ["d1", "d2"] and len(panel) > 1
    assert (panel["d2"] > panel["d1"]).all()  # binned by my_visibility: d2 loses more in every bin
    # the same column without the role: no SSIM panel data (as a run without full-reference today)
    assert _ssim_panel(monkeypatch, tmp_path, _declared(ScoreColumn("my_visibility", "higher"))).empty


def test_comparison_values_come_from_the_columns_with_the_roles(tmp_path):
    table = _table().head(2)
    info = _declared(
        ScoreColumn("my_psnr", "higher", role="attack_psnr"),
        ScoreColumn("my_visibility", "higher", role="attack_ssim"),
        ScoreColumn("my_gain", "lower", role="paper_gain"),
    )
    data = comparison_data(
        tmp_path, info, SimpleNamespace(examples=table), ReportFiles(tmp_path), ImageLocator(tmp_path, info)
    )
    first = data["cells"][0]
    assert (first["psnr_xa"], first["ssim_xa"], first["gain"]) == (30.0, 0.5, 0.25)
    assert first["psnr_dxa"] is None and first["ssim_dxa"] is None  # no column has those roles
    # without the roles: no PSNR/SSIM, and the gain computed from f(x), f(D(x_a)) as when the gain plugin is off
    bare = _declared(ScoreColumn("my_psnr"), ScoreColumn("my_visibility"), ScoreColumn("my_gain"))
    data = comparison_data(
        tmp_path, bare, SimpleNamespace(examples=table), ReportFiles(tmp_path), ImageLocator(tmp_path, bare)
    )
    first = data["cells"][0]
    assert first["psnr_xa"] is None and first["ssim_xa"] is None
    assert first["gain"] == pytest.approx(abs(0.5 - table["f_def_adv"].iloc[0]) / 0.5)


def test_an_old_run_reads_the_builtin_roles():
    legacy = columns.read({})
    assert {role: columns.column_with_role(legacy, role) for role in columns.ROLES} == {
        "attack_psnr": "psnr_x_xa",
        "attack_ssim": "ssim_x_xa",
        "defended_psnr": "psnr_x_dxa",
        "defended_ssim": "ssim_x_dxa",
        "attack_linf": "linf_x_xa",
        "paper_gain": "gain",
    }


def test_the_verdict_fits_the_users_attacks_by_the_attack_linf_column():
    protocol = {"cells": {}, "study": ["mine"], "budgets": {"linf": [4 / 255, 8 / 255]}}
    good = pd.DataFrame(
        {
            "metric": "m",
            "defence": "d",
            "image": ["i0", "i1"],
            "attack": "mine",
            "adaptive": "none",
            "gain": [0.1, 0.2],
            "my_linf": [3 / 255, 6 / 255],
        }
    )
    cand = V._candidates(good, protocol, "my_linf")
    assert sorted(zip(cand["image"], np.round(cand["eps"] * 255))) == [("i0", 4), ("i0", 8), ("i1", 8)]
    assert V._candidates(good, protocol, None).empty  # no column with the role: only the protocol's cells
