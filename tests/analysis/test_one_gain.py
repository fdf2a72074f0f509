"""One gain: the score plugin's stored ``gain`` column, the report's tables and the end-of-run summary use
the same formula, :func:`iqadef.analysis.scores.paper_gain` (|f(x) - f(D(x_a))| / f(x), adversarial_purification
``test.py``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from toy_plugins import small_grid_config as config

from iqadef.analysis.scores import paper_gain
from iqadef.core.cells import CellBatch
from iqadef.execute import run_grid
from iqadef.plugins.scores.gain import GainScore
from iqadef.report import summary_table


def test_the_report_and_the_summary_average_the_stored_gain_column(tmp_path, image_dir, toy_registry):
    """The worker stores every ImageScore column in float32 (worker.py), so the stored ``gain`` is
    paper_gain rounded to float32; the report averages paper_gain of the stored float64 scores: the same
    numbers, equal to the mean of the stored column up to that rounding."""
    summary = run_grid(config(tmp_path, image_dir, toy_registry, "run"), plugins=toy_registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    info = json.loads((summary.run_dir / "run.json").read_text())
    ok = df[df["status"] == "ok"]
    assert len(ok) == len(df) > 0 and "gain" in df.columns
    exact = paper_gain(ok["f_clean"], ok["f_def_adv"])
    np.testing.assert_array_equal(ok["gain"].to_numpy(), exact.astype(np.float32).astype(float))
    report = summary_table(df, info)
    assert len(report) == 2  # 1 metric x 1 attack x 2 defences
    for table in (report, summary.table):  # the report's table, and the one the run prints
        for row in table.itertuples():
            mine = (
                (ok["metric"] == row.metric) & (ok["attack"] == row.attack) & (ok["defence"] == row.defence)
            ).to_numpy()
            stored = ok["gain"].to_numpy()[mine]
            assert len(stored) > 0 and np.isfinite(stored).all()
            assert row.gain == np.mean(exact[mine])
            assert row.gain == pytest.approx(np.mean(stored), rel=1e-6, abs=0)


def test_the_gain_divides_by_the_clean_score_itself_and_is_nan_at_zero():
    gains = paper_gain([50.0, -2.0, 0.0, 10.0], [60.0, -1.0, 1.0, 10.0])
    assert gains[:2].tolist() == [0.2, -0.5] and math.isnan(gains[2]) and gains[3] == 0.0


def test_the_stored_gain_is_the_plugins_earlier_float64_formula_bit_for_bit():
    """The column written before paper_gain existed: torch float64, |f(x) - f(D(x_a))| / f(x), NaN at 0."""
    g = torch.Generator().manual_seed(3)
    f_x = torch.cat([torch.randn(200, generator=g) * 30 + 20, torch.tensor([0.0, -0.0, 1e-30, float("nan")])])
    f_dxa = torch.randn(f_x.numel(), generator=g) * 30 + 20
    x = torch.zeros(f_x.numel(), 3, 2, 2)
    cells = CellBatch(
        clean=x, adv=x, def_clean=x, def_adv=x, f_clean=f_x, f_adv=f_dxa, f_def_clean=f_x, f_def_adv=f_dxa, metric=None
    )
    ref, other = f_x.to(torch.float64), f_dxa.to(torch.float64)
    earlier = (ref - other).abs() / ref
    earlier = torch.where(ref == 0, torch.full_like(earlier, math.nan), earlier)
    out = GainScore().compute(cells)
    assert out["gain"].dtype == torch.float64
    assert torch.equal(out["gain"].nan_to_num(7.0), earlier.nan_to_num(7.0))
    assert torch.equal(out["gain"].isnan(), earlier.isnan())
