"""Aggregation per metric x attack x defence, confidence intervals, pluggable summary scores."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from iqadef.analysis.scores import SummaryScore, aggregate, correlation_ci, mean_ci, summary_score_classes
from iqadef.core.plugins import installed_plugins


def test_mean_ci_is_a_t_interval():
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749462 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert (mean, n) == (2.0, 3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert mean_ci([7.0, 7.0]) == (7.0, 7.0, 7.0, 2)
    m, lo, hi, n = mean_ci([1.0, float("nan"), float("inf")])
    assert m == 1.0 and n == 1 and math.isnan(lo) and math.isnan(hi)


def test_correlation_ci_contains_rho():
    low, high = correlation_ci(0.5, 30)
    assert low < 0.5 < high
    assert all(math.isnan(v) for v in correlation_ci(0.5, 3))


class CountBig(SummaryScore):
    """Counts images whose clean score exceeds 50 (a stand-in third-party summary)."""

    name = "count-big"

    def summarise(self, group, info):
        return {"n_big": float((group["f_clean"] > 50).sum()), "span": info["range"][1] - info["range"][0]}


def table():
    return pd.DataFrame(
        {
            "image": ["a", "b", "c", "a"],
            "metric": ["m"] * 4,
            "attack": ["ifgsm"] * 4,
            "defence": ["jpeg", "jpeg", "jpeg", "flip"],
            "status": ["ok", "ok", "failed", "ok"],
            "error": ["", "", "boom", ""],
            "f_clean": [40.0, 60.0, float("nan"), 40.0],
            "f_adv": [1.0, 2.0, float("nan"), 1.0],
            "f_def_clean": [40.0, 60.0, float("nan"), 40.0],
            "f_def_adv": [50.0, 70.0, float("nan"), 44.0],
            "mos": [float("nan")] * 4,
            "gain": [1.0, 2.0, 99.0, 3.0],
        }
    )


def test_aggregate_excludes_and_counts_failed_cells():
    info = {"metrics": {"m": {"name": "m", "range": [10, 90], "higher_is_better": True}}}
    agg = aggregate(table(), info, summaries=[CountBig()])
    jpeg = agg[agg["defence"] == "jpeg"].iloc[0]
    assert jpeg["n_images"] == 2 and jpeg["n_failed"] == 1
    assert jpeg["gain_mean"] == pytest.approx(1.5)  # the failed row's 99 is ignored
    assert jpeg["gain_ci_low"] < 1.5 < jpeg["gain_ci_high"]
    assert jpeg["n_big"] == 1.0 and jpeg["span"] == 80.0
    assert "mos_mean" not in agg.columns
    flip = agg[agg["defence"] == "flip"].iloc[0]
    assert flip["n_images"] == 1 and flip["n_failed"] == 0 and flip["gain_mean"] == 3.0


class GroupRows(SummaryScore):
    """Records the rows (index, clean scores) each group's summary is given."""

    name = "group-rows"

    def summarise(self, group, info):
        return {"rows": float(int("".join(str(i + 1) for i in group.index))), "first": float(group["f_clean"].iloc[0])}


def test_aggregate_groups_as_groupby_does_with_interleaved_rows_nan_keys_and_failures():
    """Groups in order of first appearance (a NaN defence is a group), rows in table order, failed rows out of
    the values and of the rows a summary score sees: what grouping with pandas per group gives."""
    rng = np.random.default_rng(3)
    defences = ["jpeg", "flip", None, "jpeg", "blur", None, "flip", "jpeg", "blur"]
    df = pd.DataFrame(
        {
            "image": [f"i{k}" for k in range(9)],
            "metric": ["m"] * 9,
            "attack": ["a", "b", "a", "a", "b", "a", "a", "a", "b"],
            "defence": defences,
            "status": ["ok", "ok", "ok", "failed", "ok", "ok", "ok", "ok", "ok"],
            "f_clean": rng.normal(50, 10, 9),
            "gain": rng.normal(0, 1, 9),
        }
    )
    agg = aggregate(df, summaries=[GroupRows()])
    expected = []
    for keys, group in df.groupby(["metric", "attack", "defence"], sort=False, dropna=False):
        good = group[group["status"] == "ok"]
        mean, low, high, _ = mean_ci(good["gain"])
        expected.append((*keys, len(good), len(group) - len(good), mean, low, high, good.index.tolist()))
    assert len(agg) == len(expected) == 5
    for (_, row), (metric, attack, defence, n, failed, mean, low, high, index) in zip(agg.iterrows(), expected):
        assert (row["metric"], row["attack"]) == (metric, attack)
        assert row["defence"] == defence or (pd.isna(row["defence"]) and pd.isna(defence))
        assert (row["n_images"], row["n_failed"]) == (n, failed)
        assert (row["gain_mean"], row["gain_ci_low"], row["gain_ci_high"]) == (mean, low, high) or n < 2
        assert row["rows"] == float(int("".join(str(i + 1) for i in index)))
        assert row["first"] == df.loc[index[0], "f_clean"]


def test_summary_scores_come_from_the_registry():
    names = {cls.name for cls in summary_score_classes(installed_plugins())}
    assert {"srocc", "msu-robustness"} <= names

    class Plain:  # not a Plugin: only needs name + summarise (what _check_class accepts)
        name = "plain"

        def summarise(self, group, info):
            return {"plain_rows": len(group)}

    fake = SimpleNamespace(by_kind={"scores": {"plain": SimpleNamespace(cls=Plain)}})
    agg = aggregate(table(), {}, plugins=fake)
    assert agg.set_index("defence").loc["jpeg", "plain_rows"] == 2


def test_a_broken_summary_score_warns_and_the_rest_still_runs():
    class Broken(SummaryScore):
        name = "broken"

        def summarise(self, group, info):
            raise ValueError("bad")

    with pytest.warns(RuntimeWarning, match="broken"):
        agg = aggregate(table(), {}, summaries=[Broken(), CountBig()])
    assert "n_big" in agg.columns
