"""Every table of the report, as pandas frames: no matplotlib, no HTML.

The short summary (also printed at the end of a run), the adaptive-attack pairs, the per-metric gain and
SROCC matrices of the paper's Figures 3 and 4, the binned gains of Figure 5, the defence ranking, and the
formatting shared by the page: "mean [low, high]" columns (:func:`with_ci`) and markdown tables.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from iqadef.analysis.scores import (
    GROUP_COLUMNS,
    aggregate,
    bootstrap_ci,
    mean_ci,
    metric_info,
    metric_span,
    normalised_gain,
    ok_rows,
    paper_gain,
)
from iqadef.core import columns as score_columns
from iqadef.core.columns import ScoreColumn
from iqadef.core.renamed import renamed_registry_keyword

CLEAN_ROW = "clean"
N_BINS = 5


# -- the short table -----------------------------------------------------------------------------
def summary_table(df: pd.DataFrame, run_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """Mean gain |f(x) - f(D(x_a))| / f(x) with its 95% CI per metric × attack × defence.

    Columns: metric, attack, defence, n_images, n_failed, gain, gain_ci_low, gain_ci_high, and the mean of the
    run's declared quality column (:func:`iqadef.core.columns.finding_column`) when the table has it. Failed
    cells are excluded and counted.
    """
    finding = score_columns.finding_column(score_columns.read(run_info))
    quality = [finding.name] if finding is not None and finding.name in df.columns else []
    rows = []
    for keys, group in df.groupby(list(GROUP_COLUMNS), sort=False, dropna=False):
        good = ok_rows(group)
        row = dict(zip(GROUP_COLUMNS, keys))
        row["n_images"], row["n_failed"] = int(len(good)), int(len(group) - len(good))
        gains = paper_gain(good["f_clean"], good["f_def_adv"]) if len(good) else np.array([])
        row["gain"], row["gain_ci_low"], row["gain_ci_high"], _ = mean_ci(gains)
        for name in quality:
            row[name] = mean_ci(good[name].to_numpy(dtype=float))[0]
        rows.append(row)
    columns = list(GROUP_COLUMNS) + ["n_images", "n_failed", "gain", "gain_ci_low", "gain_ci_high"]
    return pd.DataFrame(rows, columns=columns + quality)


# -- adaptive attacks (BPDA / EOT) ---------------------------------------------------------------
ADAPTIVE_LABEL = re.compile(r"^(?P<twin>.+)@(?P<mode>bpda\+eot|bpda|eot)(?P<extra>,eot=\d+)?$")
ADAPTIVE_COLUMNS = (
    "metric",
    "defence",
    "attack",
    "adaptive",
    "n_images",
    "gain_non_adaptive",
    "gain_adaptive",
    "gain_difference",
    "gain_difference_ci_low",
    "gain_difference_ci_high",
    "rise_non_adaptive",
    "rise_adaptive",
    "rise_difference",
    "rise_difference_ci_low",
    "rise_difference_ci_high",
)


def split_adaptive_label(label: str) -> tuple[str, str] | None:
    """``("X", "bpda+eot,eot=8")`` for an adaptive attack label ``X@bpda+eot,eot=8``; None otherwise."""
    found = ADAPTIVE_LABEL.match(str(label))
    if found is None:
        return None
    return found["twin"], found["mode"] + (found["extra"] or "")


def has_adaptive(df: pd.DataFrame) -> bool:
    """Whether the result table has rows of an adaptive attack."""
    if "adaptive" in df.columns:
        modes = df["adaptive"].fillna("none").astype(str)
        return bool((~modes.isin(["none", ""])).any())
    return "attack" in df.columns and any(split_adaptive_label(a) for a in df["attack"].unique())


def _run_order(values: pd.Series, configured: Any) -> list[str]:
    """The distinct ``values`` in the registry's order (``run.json``), the others after them."""
    present = list(dict.fromkeys(values))
    first = [v for v in (configured or []) if v in present]
    return first + [v for v in present if v not in first]


def adaptive_table(df: pd.DataFrame, run_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per metric × defence: mean gain under each adaptive attack and under its non-adaptive twin.

    An adaptive attack's label is ``X@mode`` (``AttackEntry.label``); its twin is the attack labelled
    ``X`` in the same run. Both gains are means over the images where both cells succeeded; the
    difference (adaptive − non-adaptive) comes with the 95% Student-t CI of the paired per-image
    differences. ``rise_*`` do the same for the signed, range-normalised move of the defended score,
    ``±(f(D(x_a)) - f(D(x))) / span`` (positive = towards "better", what the attacker wants). Without a
    twin in the run, the non-adaptive values and the differences are NaN and the adaptive ones are over
    all its successful images. Empty (with the columns) when the run has no
    adaptive attack. Rows follow the registry's order of metrics, attacks and defences (``run_info``).
    """
    rows = []
    if not len(df) or not {"attack", "defence", "metric", "image"} <= set(df.columns):
        return pd.DataFrame(columns=list(ADAPTIVE_COLUMNS))
    good = ok_rows(df).copy()
    good["_gain"] = paper_gain(good["f_clean"], good["f_def_adv"])
    sign = good["metric"].map(lambda m: 1.0 if metric_info(run_info, m)["higher_is_better"] else -1.0)
    span = good["metric"].map(lambda m: metric_span(metric_info(run_info, m)))
    good["_rise"] = sign * (good["f_def_adv"].astype(float) - good["f_def_clean"].astype(float)) / span
    attacks = _run_order(df["attack"], (run_info or {}).get("attacks"))
    defences = _run_order(df["defence"], (run_info or {}).get("defences"))
    for metric in _run_order(df["metric"], list((run_info or {}).get("metrics", {}) or {})):
        mine = good[good["metric"] == metric]
        for attack in attacks:
            split = split_adaptive_label(attack)
            if split is None:
                continue
            twin, mode = split
            for defence in defences:
                cell = mine[(mine["attack"] == attack) & (mine["defence"] == defence)]
                if not len(df[(df["metric"] == metric) & (df["attack"] == attack) & (df["defence"] == defence)]):
                    continue
                adaptive = cell.drop_duplicates("image").set_index("image")[["_gain", "_rise"]]
                plain = mine[(mine["attack"] == twin) & (mine["defence"] == defence)]
                plain = plain.drop_duplicates("image").set_index("image")[["_gain", "_rise"]]
                row: dict[str, Any] = {"metric": metric, "defence": defence, "attack": twin, "adaptive": mode}
                common = adaptive.index.intersection(plain.index) if twin in attacks else adaptive.index
                row["n_images"] = int(len(common))
                for measure in ("gain", "rise"):
                    a = adaptive.loc[common, f"_{measure}"].to_numpy(float)
                    row[f"{measure}_adaptive"] = mean_ci(a)[0]
                    if twin in attacks:
                        p = plain.loc[common, f"_{measure}"].to_numpy(float)
                        diff, low, high, _ = mean_ci(a - p)
                        row[f"{measure}_non_adaptive"] = mean_ci(p)[0]
                    else:
                        diff = low = high = row[f"{measure}_non_adaptive"] = math.nan
                    row.update(
                        {
                            f"{measure}_difference": diff,
                            f"{measure}_difference_ci_low": low,
                            f"{measure}_difference_ci_high": high,
                        }
                    )
                rows.append(row)
    return pd.DataFrame(rows, columns=list(ADAPTIVE_COLUMNS))


# -- per-metric matrices for the figures ---------------------------------------------------------
def _defence_order(matrix: pd.DataFrame) -> list[str]:
    return list(matrix.mean(axis=0, skipna=True).sort_values(kind="stable").index)


def gain_matrix(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean gain, attacks × defences (defences sorted by mean gain), plus the clean-image row."""
    good = ok_rows(df[df["metric"] == metric]).copy()
    if good.empty:
        return pd.DataFrame()
    good["_gain"] = paper_gain(good["f_clean"], good["f_def_adv"])
    good["_gain_clean"] = paper_gain(good["f_clean"], good["f_def_clean"])
    matrix = good.pivot_table(
        index="attack", columns="defence", values="_gain", aggfunc="mean", sort=False, dropna=False
    )
    # D(x) does not depend on the attack: one value per image and defence.
    clean = good.drop_duplicates(["image", "defence"]).groupby("defence", sort=False)["_gain_clean"].mean()
    matrix.loc[CLEAN_ROW] = clean.reindex(matrix.columns)
    order = _defence_order(matrix.drop(index=CLEAN_ROW))
    return matrix[order]


def _spearman(a: pd.Series, b: pd.Series) -> float:
    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a[keep], b[keep])[0])


def has_mos(df: pd.DataFrame) -> bool:
    """Whether the table has MOS values (then Figure 4 correlates with MOS, else with f(x))."""
    return "mos" in df.columns and bool(np.isfinite(pd.to_numeric(df["mos"], errors="coerce")).any())


def srocc_matrix(df: pd.DataFrame, metric: str, reference: str = "mos") -> pd.DataFrame:
    """SROCC(reference, f(D(x_a))), attacks × defences, plus the clean row SROCC(reference, f(D(x))).

    ``reference`` is ``mos`` (the paper's Figure 4) or ``f_clean``: without MOS, the metric's own
    ranking of the clean images is what a defence should keep (SROCC 1: the order is untouched).
    """
    good = ok_rows(df[df["metric"] == metric])
    if good.empty or (reference == "mos" and not has_mos(good)):
        return pd.DataFrame()
    cells = {
        (a, d): _spearman(g[reference], g["f_def_adv"]) for (a, d), g in good.groupby(["attack", "defence"], sort=False)
    }
    matrix = pd.Series(cells).unstack()
    attacks = list(dict.fromkeys(good["attack"]))
    defences = list(dict.fromkeys(good["defence"]))
    matrix = matrix.reindex(index=attacks, columns=defences)
    unique = good.drop_duplicates(["image", "defence"])
    matrix.loc[CLEAN_ROW] = [
        _spearman(g[reference], g["f_def_clean"]) if len(g) else math.nan
        for g in (unique[unique["defence"] == d] for d in defences)
    ]
    order = list(matrix.drop(index=CLEAN_ROW).mean(axis=0).sort_values(ascending=False, kind="stable").index)
    return matrix[order]


#: The ranking's own columns; the score columns declared ``ranking`` (:mod:`iqadef.core.columns`) stand
#: between ``gain`` and ``n_images``.
RANKING_HEAD = ("rank", "defence", "norm_gain", "norm_gain_ci_low", "norm_gain_ci_high", "gain")
RANKING_TAIL = ("n_images", "n_cells")
#: How many defences the key findings name per metric and measure.
TOP_FINDINGS = 3


def _finite_mean(values: pd.Series) -> float:
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def ranking_table(
    df: pd.DataFrame, run_info: dict[str, Any] | None = None, metric: str | None = None, seed: int = 0
) -> pd.DataFrame:
    """Defences ranked by the range-normalised gain |f(x) - f(D(x_a))| / (high - low), lower first.

    One metric (``metric``) or all of them pooled (None: the normalised gain is comparable between
    metrics, the paper's gain is not). Each image counts once per defence: its cells (attacks, metrics)
    are averaged first, then the mean over images gets a BCa bootstrap interval
    (:func:`~iqadef.analysis.scores.bootstrap_ci`); cells of one image are not independent draws. Beside it:
    the paper's ``gain`` (mean over cells, the reference's number) and, when the table has them, the score
    columns ``run.json`` declares with a ``ranking`` (:func:`iqadef.core.columns.read`; the built-ins:
    ``quality_score``, ``similarity_score``), an ``interval`` one with its bootstrap interval, a ``mean`` one
    alone.
    """
    declared = [
        c
        for c in score_columns.ranking_columns(score_columns.read(run_info))
        if c.name not in RANKING_HEAD + RANKING_TAIL
    ]
    wanted = list(RANKING_HEAD) + [n for c in declared for n in _ranking_names(c)] + list(RANKING_TAIL)
    good = ok_rows(df if metric is None else df[df["metric"] == metric])
    if good.empty or not {"f_clean", "f_def_adv", "defence", "metric"} <= set(good.columns):
        return pd.DataFrame(columns=wanted)
    span = good["metric"].map(lambda m: metric_span(metric_info(run_info, m))).to_numpy(dtype=float)
    good = good.assign(
        _norm=normalised_gain(good["f_clean"], good["f_def_adv"], 1.0) / span,
        _gain=paper_gain(good["f_clean"], good["f_def_adv"]),
    )
    shown = [c for c in declared if c.name in good.columns]
    measures = ["_norm"] + [c.name for c in shown]
    for col in measures[1:]:
        good[col] = pd.to_numeric(good[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
    rows = []
    cluster = "image" if "image" in good.columns else None
    for defence in dict.fromkeys(good["defence"]):
        mine = good[good["defence"] == defence]
        per_image = mine.groupby(cluster, sort=False)[measures].mean() if cluster else mine[measures]
        row: dict[str, Any] = {"defence": defence}
        row["norm_gain"], row["norm_gain_ci_low"], row["norm_gain_ci_high"], _ = bootstrap_ci(
            per_image["_norm"], seed=seed
        )
        row["gain"] = _finite_mean(mine["_gain"])
        for column in shown:
            name = column.name
            if column.ranking == "interval":
                row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"], _ = bootstrap_ci(per_image[name], seed=seed)
            else:
                row[name] = _finite_mean(per_image[name])
        row["n_images"], row["n_cells"] = int(len(per_image)), int(len(mine))
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values("norm_gain", kind="stable", na_position="last").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table[[c for c in wanted if c in table.columns]]


def _ranking_names(column: ScoreColumn) -> list[str]:
    name = column.name
    return [name, f"{name}_ci_low", f"{name}_ci_high"] if column.ranking == "interval" else [name]


def key_findings(
    rankings: dict[str, pd.DataFrame],
    top: int = TOP_FINDINGS,
    baselines: tuple[str, ...] = (),
    run_info: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per metric: the ``top`` defences by normalised gain (lowest) and by the declared quality column (best
    first on its side; :func:`iqadef.core.columns.finding_column`, ``quality_score`` for the built-ins); the
    ``baselines`` (no-defence: its quality is the attacked image's, not a defence's) are left out of the
    quality list."""
    column = score_columns.finding_column(score_columns.read(run_info))
    out = []
    for metric, table in rankings.items():
        if table.empty:
            continue
        by_gain = table.head(top)
        by_quality: list[tuple[Any, ...]] = []
        if column is not None and column.name in table.columns:
            name = column.name
            best = (
                table[~table["defence"].isin(baselines)]
                .sort_values(name, ascending=column.direction == "lower", kind="stable", na_position="last")
                .head(top)
            )
            by_quality = [
                (d, v, lo, hi)
                for d, v, lo, hi in zip(best["defence"], best[name], best[f"{name}_ci_low"], best[f"{name}_ci_high"])
                if np.isfinite(v)
            ]
        out.append(
            {
                "metric": metric,
                "by_gain": [
                    (r.defence, r.norm_gain, r.norm_gain_ci_low, r.norm_gain_ci_high) for r in by_gain.itertuples()
                ],
                "by_quality": by_quality,
            }
        )
    return out


def binned_gain(df: pd.DataFrame, metric: str, column: str) -> pd.DataFrame:
    """Mean gain per quantile bin of ``column`` (rows: bins, columns: defences)."""
    good = ok_rows(df[df["metric"] == metric]).copy()
    if good.empty or column not in good.columns:
        return pd.DataFrame()
    good["_gain"] = paper_gain(good["f_clean"], good["f_def_adv"])
    values = pd.to_numeric(good[column], errors="coerce")
    good = good[np.isfinite(values)]
    values = values[np.isfinite(values)]
    if good.empty:
        return pd.DataFrame()
    if values.nunique() < 2:
        bins = pd.Series([f"{values.iloc[0]:.4g}"] * len(values), index=values.index)
    else:
        cut = pd.qcut(values, q=min(N_BINS, values.nunique()), duplicates="drop")
        bins = cut.map(lambda iv: f"{iv.left:.4g}–{iv.right:.4g}").astype(str)
        order = [f"{iv.left:.4g}–{iv.right:.4g}" for iv in cut.cat.categories]
        good["_bin"] = pd.Categorical(bins, categories=list(dict.fromkeys(order)), ordered=True)
    if "_bin" not in good.columns:
        good["_bin"] = bins
    return good.pivot_table(index="_bin", columns="defence", values="_gain", aggfunc="mean", observed=True, sort=True)


def example_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Successful rows that saved an example D(x_a) image."""
    if "example_path" not in df.columns:
        return df.iloc[0:0]
    good = ok_rows(df)
    return good[good["example_path"].astype(str) != ""]


def failed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The cells that did not succeed, with the columns that say which and why."""
    failed = df[df["status"].astype(str) != "ok"] if "status" in df.columns else df.iloc[0:0]
    return failed[[c for c in ("image", "metric", "attack", "defence", "error") if c in failed.columns]]


# -- formatting ----------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """A cell as the report shows it: floats to 4 significant digits, non-finite as "–"."""
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def with_ci(agg: pd.DataFrame) -> pd.DataFrame:
    """``agg`` with each ``x_mean``/``x_ci_low``/``x_ci_high`` (or ``x_median``, ``x``) as "m [lo, hi]"."""
    out = pd.DataFrame(index=agg.index)
    used: set[str] = set()
    for col in agg.columns:
        if col in used:
            continue
        base = col[:-5] if col.endswith("_mean") else col[:-7] if col.endswith("_median") else col
        low, high = f"{base}_ci_low", f"{base}_ci_high"
        if low in agg.columns and high in agg.columns and col not in (low, high):
            out[base] = [
                f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else fmt(m)
                for m, lo, hi in zip(agg[col], agg[low], agg[high])
            ]
            used.update({col, low, high})
        elif not (col.endswith("_ci_low") or col.endswith("_ci_high")):
            out[col] = [fmt(v) for v in agg[col]]
            used.add(col)
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_(empty)_\n"
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def key_scores(formatted: pd.DataFrame, run_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """The scores the page shows first: the columns ``run.json`` declares ``key``, in their order
    (:mod:`iqadef.core.columns`); the rest are in the full table and summary.csv."""
    names = score_columns.key_columns(score_columns.read(run_info))
    cols = [c for c in (*GROUP_COLUMNS, "n_images", "n_failed", *names) if c in formatted.columns]
    return formatted[cols]


def key_directions(run_info: dict[str, Any] | None, shown: pd.DataFrame) -> str:
    """The key columns ``shown`` by their better side, as the line under the main table ("" when none has one)."""
    columns = score_columns.read(run_info)
    sides: dict[str, list[str]] = {"higher": [], "lower": []}
    for name in shown.columns:
        column = columns.get(name)
        if column is not None and column.direction is not None:
            sides[column.direction].append(column.title or name)
    return " ".join(f"{side.capitalize()} is better: {', '.join(names)}." for side, names in sides.items() if names)


# -- all of a report's tables --------------------------------------------------------------------
@dataclass
class ReportTables:
    """The tables one report shows, computed once and handed to the figures and the page."""

    aggregated: pd.DataFrame  # every score per group, as summary.csv holds it
    short: pd.DataFrame  # summary_table
    formatted: pd.DataFrame  # with_ci(aggregated)
    ranking: pd.DataFrame  # pooled over metrics (ranking_table)
    rankings: dict[str, pd.DataFrame]  # per metric label, in the run's order
    adaptive: pd.DataFrame | None  # None when the run has no adaptive attack
    examples: pd.DataFrame  # rows with an example D(x_a) image
    failed: pd.DataFrame
    mos: bool


@renamed_registry_keyword
def report_tables(df: pd.DataFrame, run_info: dict[str, Any], plugins: Any = None) -> ReportTables:
    """Aggregate the result table and build every table of the report from it."""
    agg = aggregate(df, run_info, plugins=plugins)
    short = summary_table(df, run_info)
    formatted = with_ci(agg)
    metrics = (
        _run_order(df["metric"], list((run_info or {}).get("metrics", {}) or {})) if "metric" in df.columns else []
    )
    seed = (run_info or {}).get("seed", 0)
    seed = seed if isinstance(seed, int) else 0
    return ReportTables(
        aggregated=agg,
        short=short,
        formatted=formatted,
        ranking=ranking_table(df, run_info, seed=seed),
        rankings={m: ranking_table(df, run_info, metric=m, seed=seed) for m in metrics},
        adaptive=adaptive_table(df, run_info) if has_adaptive(df) else None,
        examples=example_rows(df),
        failed=failed_rows(df),
        mos=has_mos(df),
    )
