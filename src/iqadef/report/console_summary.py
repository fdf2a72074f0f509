"""What the console summary of ``iqadef run`` shows: the report's ranking, per defence × attack.

The paper's gain |f(x) - f(D(x_a))| / f(x) misleads for a metric whose scores reach 0 or below
(docs/scores.md "Ranking"), so the console ranks defences as the report does, by the normalised gain of
:func:`~iqadef.report.tables.ranking_table`, and shows the paper's gain beside it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from iqadef.analysis.scores import metric_info, metric_span, normalised_gain, ok_rows
from iqadef.analysis.verdict import study_rows
from iqadef.report.tables import _run_order, ranking_table

#: The columns after the attacks: the ranking's mean normalised gain and the paper's mean gain.
MEAN, PAPER_GAIN = "mean", "paper gain"


def summary_grids(df: pd.DataFrame, run_info: dict[str, Any] | None) -> dict[str, pd.DataFrame]:
    """Per metric (the run's order): defences (rows, in the report's ranking order) × attacks of the mean
    normalised gain, then ``mean`` (the ranking's value) and ``paper gain`` (the paper's mean gain)."""
    df = study_rows(df, run_info)  # the study's rows, as the report's ranking uses them
    if df.empty or not {"metric", "attack", "defence", "f_clean", "f_def_adv"} <= set(df.columns):
        return {}
    grids = {}
    for metric in _run_order(df["metric"], list((run_info or {}).get("metrics", {}) or {})):
        ranking = ranking_table(df, run_info, metric=metric)
        if ranking.empty:
            continue
        good = ok_rows(df[df["metric"] == metric])
        span = metric_span(metric_info(run_info, metric))
        good = good.assign(_norm=normalised_gain(good["f_clean"], good["f_def_adv"], span))
        attacks = _run_order(good["attack"], list((run_info or {}).get("attacks", {}) or {}))
        grid = good.pivot_table(index="defence", columns="attack", values="_norm", aggfunc="mean", sort=False)
        grid = grid.reindex(index=list(ranking["defence"]), columns=attacks)
        grid[MEAN] = ranking["norm_gain"].to_numpy()
        grid[PAPER_GAIN] = ranking["gain"].to_numpy()
        grids[metric] = grid
    return grids
