"""The report's first answer: per attack, the best defence by the gain the report ranks by and what it costs
in quality; per metric, the defences' trade-off (normalised gain against quality) and its Pareto front.

The gain is the range-normalised gain |f(x) - f(D(x_a))| / (high - low) of the rankings (docs/scores.md,
"Ranking"); quality is the score column the run declares for the key findings
(:func:`iqadef.core.columns.finding_column`; for the built-ins the quality plugin's ½(SSIM + PSNR/80) of D(x_a)
against x, the study's adversarial_purification ``test.py``), on its declared better side, shown beside the
baseline's (``no-defence``: x_a against x) because an attack already moves it. A run that declares no such
column has no quality here. Defences that move pixels (``Defence.geometric``: flip, rotate, crop; recorded
in ``run.json``) are compared pixel-wise with x, so their low quality is the displacement, not damage:
they are marked and never called the best on quality.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from iqadef.analysis.scores import metric_info, metric_span, normalised_gain, ok_rows
from iqadef.core.columns import ScoreColumn, finding_column, read

BASELINE_NAME = "no-defence"
GEOMETRIC_MARK = "†"
GEOMETRIC_NOTE = (
    f"{GEOMETRIC_MARK} moves pixels (flip, rotate, crop: the defence's `geometric` attribute): its "
    "quality score compares D(x_a) with x pixel by pixel, so a low value is the displacement, not "
    "damage to the image."
)
#: The best-defence table; the ``quality`` ones (the declared quality column, :func:`quality_column`) only when
#: the run declares one.
BEST_COLUMNS = (
    "attack",
    "best_defence",
    "norm_gain",
    "norm_gain_no_defence",
    "quality",
    "quality_no_defence",
    "quality_change",
    "n_images",
)
QUALITY_COLUMNS = ("quality", "quality_no_defence", "quality_change")


def quality_column(run_info: dict[str, Any] | None) -> ScoreColumn | None:
    """The score column the glance and the trade-off show as quality: the run's declared finding column
    (:func:`iqadef.core.columns.finding_column`), None when it declares none."""
    return finding_column(read(run_info))


def quality_label(column: ScoreColumn) -> str:
    """How the page names the quality column: its declared ``title``, else its name."""
    return column.title or column.name


def defence_plugins(run_info: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``run.json``'s ``defence_plugins``: label -> {name, geometric} (empty for runs written before it)."""
    return dict((run_info or {}).get("defence_plugins") or {})


def with_defence_plugins(run_info: dict[str, Any], plugins: Any = None) -> dict[str, Any]:
    """``run_info`` with ``defence_plugins`` filled in for a run written before ``run.json`` recorded it: each
    label of ``defences`` read as the run labels them (``name[params]``, a composition's stages joined by
    ``+``) and looked up in the installed plugins (``plugins``, else the global ones); a label that is not
    found stays out (no mark: nothing is claimed about it)."""
    if run_info.get("defence_plugins") or not run_info.get("defences"):
        return run_info
    if plugins is None:
        from iqadef.core.plugins import installed_plugins

        plugins = installed_plugins()
    known = set(plugins.names("defences"))
    found = {}
    for label in run_info["defences"]:
        names = [part.split("[", 1)[0] for part in str(label).split("+")]
        if names and all(n in known for n in names):
            found[label] = {
                "name": names[0] if len(names) == 1 else "+".join(names),
                "geometric": any(getattr(plugins.get("defences", n), "geometric", False) for n in names),
            }
    return dict(run_info, defence_plugins=found)


def baseline_defences(labels: list[str], run_info: dict[str, Any] | None) -> list[str]:
    """The labels of the no-defence baseline (by plugin name; by label for runs that did not record names)."""
    plugins = defence_plugins(run_info)
    return [d for d in labels if (plugins.get(d) or {}).get("name", d) == BASELINE_NAME]


def geometric_defences(labels: list[str], run_info: dict[str, Any] | None) -> list[str]:
    """The labels of defences that move pixels (``Defence.geometric``, as ``run.json`` records it)."""
    plugins = defence_plugins(run_info)
    return [d for d in labels if (plugins.get(d) or {}).get("geometric")]


def cell_means(df: pd.DataFrame, run_info: dict[str, Any] | None, metric: str) -> pd.DataFrame:
    """Per attack x defence of ``metric``: mean normalised gain and mean ``quality`` (the declared quality
    column, :func:`quality_column`; NaN when the run declares none or the table lacks it) over the images."""
    good = ok_rows(df[df["metric"] == metric]) if "metric" in df.columns else df.iloc[0:0]
    if good.empty or not {"f_clean", "f_def_adv", "attack", "defence"} <= set(good.columns):
        return pd.DataFrame(columns=["attack", "defence", "norm_gain", "quality", "n_images"])
    span = metric_span(metric_info(run_info, metric))
    good = good.assign(norm_gain=normalised_gain(good["f_clean"], good["f_def_adv"], 1.0) / span)
    column = quality_column(run_info)
    if column is not None and column.name in good.columns:
        good["quality"] = pd.to_numeric(good[column.name], errors="coerce").replace([np.inf, -np.inf], np.nan)
    else:
        good["quality"] = math.nan
    means = good.groupby(["attack", "defence"], sort=False).agg(
        norm_gain=("norm_gain", "mean"), quality=("quality", "mean"), n_images=("norm_gain", "size")
    )
    return means.reset_index()


def best_per_attack(df: pd.DataFrame, run_info: dict[str, Any] | None, metric: str) -> pd.DataFrame:
    """Per attack of ``metric`` (the run's order): the defence with the lowest mean normalised gain, its
    ``quality`` (:func:`quality_column`), and both values of the no-defence baseline under the same attack (the
    attack's own effect and the attacked image's quality); ``quality_change`` = quality - baseline's quality.
    Without a declared quality column the table has no ``quality*`` columns.

    The baseline itself is a candidate: where no defence lowers the gain it is named, which is the answer.
    """
    means = cell_means(df, run_info, metric)
    rows = []
    for attack in dict.fromkeys(means["attack"]):
        mine = means[(means["attack"] == attack) & np.isfinite(means["norm_gain"].to_numpy(dtype=float))]
        if mine.empty:
            continue
        best = mine.sort_values("norm_gain", kind="stable").iloc[0]
        base = mine[mine["defence"].isin(baseline_defences(list(mine["defence"]), run_info))]
        base_gain = float(base["norm_gain"].iloc[0]) if len(base) else math.nan
        base_quality = float(base["quality"].iloc[0]) if len(base) else math.nan
        rows.append(
            {
                "attack": attack,
                "best_defence": best["defence"],
                "norm_gain": float(best["norm_gain"]),
                "norm_gain_no_defence": base_gain,
                "quality": float(best["quality"]),
                "quality_no_defence": base_quality,
                "quality_change": float(best["quality"]) - base_quality,
                "n_images": int(best["n_images"]),
            }
        )
    declared = quality_column(run_info) is not None
    shown = [c for c in BEST_COLUMNS if declared or c not in QUALITY_COLUMNS]
    return pd.DataFrame(rows, columns=list(BEST_COLUMNS))[shown]


def pareto_front(gain: np.ndarray, quality: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Indices of the points no other point beats (gain lower or equal and quality better or equal, one of
    them strictly; better is higher, or lower when ``higher_is_better`` is False), by increasing gain; points
    with a missing value are never on the front."""
    gain, quality = np.asarray(gain, dtype=float), np.asarray(quality, dtype=float)
    if not higher_is_better:
        quality = -quality
    finite = np.flatnonzero(np.isfinite(gain) & np.isfinite(quality))
    front = []
    for i in finite:
        beaten = (
            (gain[finite] <= gain[i])
            & (quality[finite] >= quality[i])
            & ((gain[finite] < gain[i]) | (quality[finite] > quality[i]))
        )
        if not beaten.any():
            front.append(i)
    return np.array(sorted(front, key=lambda i: (gain[i], -quality[i])), dtype=int)


def tradeoff_points(ranking: pd.DataFrame, run_info: dict[str, Any] | None) -> pd.DataFrame:
    """One point per defence of a metric's ranking: ``defence``, ``norm_gain``, ``quality`` (the declared
    quality column, :func:`quality_column`), ``geometric``, ``baseline``, ``pareto`` (on the front of the
    non-geometric defences, on the quality column's better side: a geometric one's quality is not comparable,
    so it can neither be on the front nor push others off it). Empty when the run declares no quality column
    or the ranking lacks it."""
    column = quality_column(run_info)
    if ranking.empty or column is None or column.name not in ranking.columns:
        return pd.DataFrame(columns=["defence", "norm_gain", "quality", "geometric", "baseline", "pareto"])
    labels = list(ranking["defence"])
    points = pd.DataFrame(
        {
            "defence": labels,
            "norm_gain": ranking["norm_gain"].to_numpy(dtype=float),
            "quality": ranking[column.name].to_numpy(dtype=float),
        }
    )
    points["geometric"] = points["defence"].isin(geometric_defences(labels, run_info))
    points["baseline"] = points["defence"].isin(baseline_defences(labels, run_info))
    points["pareto"] = False
    plain = np.flatnonzero(~points["geometric"].to_numpy())
    front = pareto_front(
        points["norm_gain"].to_numpy()[plain], points["quality"].to_numpy()[plain], column.direction == "higher"
    )
    points.loc[plain[front], "pareto"] = True
    return points
