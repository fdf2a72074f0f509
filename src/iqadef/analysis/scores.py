"""Summary scores and the per-group aggregation of a result table.

Two kinds of scores exist (both registered through ``iqadef_register_scores``):

* :class:`iqadef.ImageScore` — one value per image, computed by the runner; each name is a column.
* :class:`SummaryScore` — one value per *group* of images (a metric × attack × defence cell group),
  computed at report time from the result table: SROCC, distribution distances, scores that need a
  min-max scaler fitted on the whole group.

:func:`aggregate` groups the table by metric × attack × defence and reports, for every per-image
numeric column, its mean with a 95% confidence interval (Student-t interval on the mean, as the MSU
robustness benchmark does), then applies every registered summary score.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, ClassVar, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from iqadef.core import columns as score_columns
from iqadef.core.columns import DeclaresColumns
from iqadef.core.contract import Plugin
from iqadef.core.errors import ConfigError
from iqadef.core.plugins import installed_plugins, is_summary_score
from iqadef.core.renamed import renamed_registry_keyword

#: Columns of the result table that identify a cell or describe it; never averaged.
ID_COLUMNS = (
    "image",
    "metric",
    "attack",
    "defence",
    "metric_key",
    "attack_key",
    "defence_key",
    "metric_params",
    "attack_params",
    "defence_params",
    "status",
    "error",
    "adv_path",
    "example_path",
    "image_path",
    "unit",
    "adaptive",
)
#: Numeric columns that are inputs rather than measures (MOS is a property of the image).
NOT_AVERAGED = ("mos",)
GROUP_COLUMNS = ("metric", "attack", "defence")
CONFIDENCE = 0.95


class SummaryScore(DeclaresColumns, Plugin):
    """A score computed once per metric × attack × defence group from the result table's rows; each name it
    returns is described by a :class:`~iqadef.core.columns.ScoreColumn` in :attr:`columns`."""

    kind: ClassVar[str] = "summary_score"

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return cls.describe_columns()

    def summarise(self, group: pd.DataFrame, info: dict[str, Any]) -> dict[str, float]:
        """Return named floats for one group.

        ``group`` holds the successful rows of one metric × attack × defence (columns as in the result
        table); ``info`` describes the metric: ``name``, ``range`` ``(lo, hi)``, ``higher_is_better``,
        plus ``label``, ``attack`` and ``defence``.
        """
        raise NotImplementedError


# -- statistics ----------------------------------------------------------------------------------


def _finite(values: Iterable[float] | np.ndarray | pd.Series) -> np.ndarray:
    """The finite values of ``values`` as a float array (NaN and ±inf are left out of means and intervals)."""
    arr = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """Mean and two-sided Student-t confidence interval of the mean, ignoring NaN/inf.

    Returns ``(mean, low, high, n)``; the interval is NaN with fewer than two finite values, and
    collapses to the mean when all values are equal.
    """
    arr = _finite(values)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    sem = float(arr.std(ddof=1) / math.sqrt(n))
    if sem == 0.0:
        return mean, mean, mean, n
    half = _t_quantile(0.5 + confidence / 2, n - 1) * sem
    return mean, mean - half, mean + half, n


@lru_cache(maxsize=4096)
def _t_quantile(q: float, dof: int) -> float:
    """``stats.t.ppf`` once per (q, dof): a report asks for the same few thousands of times."""
    return float(stats.t.ppf(q, dof))


def correlation_ci(rho: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Confidence interval of a Spearman correlation by the Fisher z-transform.

    Uses the variance ``1.06 / (n - 3)`` of Fieller, Hartley & Pearson (1957) for Spearman's rho.
    NaN for ``n < 4`` or a NaN rho.
    """
    if not np.isfinite(rho) or n < 4:
        return math.nan, math.nan
    rho = float(np.clip(rho, -0.999999, 0.999999))
    z = math.atanh(rho)
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


# -- metric information --------------------------------------------------------------------------
def metric_info(run_info: dict[str, Any] | None, label: str) -> dict[str, Any]:
    """What ``run.json`` says about a metric label, with safe defaults (range 0..1, higher is better)."""
    metrics = (run_info or {}).get("metrics", {}) or {}
    entry = dict(metrics.get(label, {}) or {})
    low, high = entry.get("range", (0.0, 1.0)) or (0.0, 1.0)
    return {
        "label": label,
        "name": entry.get("name", label),
        "range": (float(low), float(high)),
        "higher_is_better": bool(entry.get("higher_is_better", True)),
    }


def metric_span(info: dict[str, Any]) -> float:
    low, high = info["range"]
    span = float(high - low)
    return span if span != 0 else 1.0


# -- the installed score plugins -------------------------------------------------------------------
def summary_score_classes(plugins: Any = None) -> list[type]:
    """Registered summary-score classes (those with ``summarise`` that are not ImageScores), by name. Only
    these are imported (a lazy registration says which it is): the report needs no per-image score, nor torch."""
    if plugins is None:
        plugins = installed_plugins()
    table = plugins.by_kind.get("scores", {})
    return [table[n].cls for n in sorted(table) if _is_summary(table[n])]


def image_score_classes(plugins: Any = None) -> list[type]:
    """Registered per-image score classes, by name (what the runner instantiates and calls)."""
    if plugins is None:
        plugins = installed_plugins()
    table = plugins.by_kind.get("scores", {})
    return [table[n].cls for n in sorted(table) if not _is_summary(table[n])]


def _is_summary(registration: Any) -> bool:
    known = getattr(registration, "summary", None)  # a plugins.Registration knows without importing
    return is_summary_score(registration.cls) if known is None else bool(known)


def recorded_columns(plugins: Any = None) -> dict[str, dict[str, Any]]:
    """``run.json``'s ``score_columns``: what every registered score plugin declares of its columns."""
    return score_columns.record([*image_score_classes(plugins), *summary_score_classes(plugins)])


def measure_columns(df: pd.DataFrame) -> list[str]:
    """Per-image numeric columns to average: f values and every ImageScore column."""
    out = []
    for col in df.columns:
        if col in ID_COLUMNS or col in NOT_AVERAGED:
            continue
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            out.append(col)
    return out


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose status is 'ok' (all rows when the table has no status column)."""
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(str) == "ok"]


def _ok_mask(df: pd.DataFrame) -> np.ndarray:
    """:func:`ok_rows` as a boolean array over the table's rows."""
    if "status" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return (df["status"].astype(str) == "ok").to_numpy()


def _group_positions(df: pd.DataFrame) -> list[tuple[tuple[Any, ...], np.ndarray]]:
    """``(keys, row positions)`` of each metric × attack × defence group, as ``df.groupby(GROUP_COLUMNS,
    sort=False, dropna=False)`` gives them: groups in order of first appearance, rows in table order."""
    codes = df.groupby(list(GROUP_COLUMNS), sort=False, dropna=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    keys = df[list(GROUP_COLUMNS)]
    return [(tuple(keys.iloc[positions[0]]), positions) for positions in np.split(order, starts[1:]) if len(positions)]


# -- aggregation ---------------------------------------------------------------------------------
@renamed_registry_keyword
def aggregate(
    df: pd.DataFrame,
    run_info: dict[str, Any] | None = None,
    plugins: Any = None,
    summaries: Iterable[Any] | None = None,
) -> pd.DataFrame:
    """One row per metric × attack × defence: counts, mean and 95% CI of each measure, summary scores.

    Columns: ``metric``, ``attack``, ``defence``, ``n_images`` (successful cells), ``n_failed``; for
    each per-image column ``c``: ``c_mean``, ``c_ci_low``, ``c_ci_high``; then whatever the summary
    scores return. Failed cells are excluded from every value and counted in ``n_failed``.
    Infinite values (the PSNR of identical images, and scores built on it, as the reference's
    scikit-image gives them) are left out of the mean and interval and counted in ``c_n_inf``, a
    column present for every ``c`` that has one anywhere in the table.
    ``summaries`` (instances) overrides the registered summary scores.
    """
    if summaries is None:
        summaries = [cls() for cls in summary_score_classes(plugins)]
    summaries = list(summaries)
    missing = [c for c in GROUP_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"result table lacks the column(s) {missing}; it needs {list(GROUP_COLUMNS)}")
    columns = measure_columns(df)
    medians = {n for n, c in score_columns.read(run_info).items() if c.aggregate == "median"}
    ok_mask = _ok_mask(df)
    # Each column converted once; a group's values are its rows' slice, in the table's order (as the group's
    # own column would give them): pandas indexing per group and column was most of the time here.
    values_of = {c: df[c].to_numpy(dtype=float) for c in columns}
    with_inf = {c for c in columns if np.isinf(values_of[c][ok_mask]).any()}
    rows = []
    for keys, positions in _group_positions(df):
        good_positions = positions[ok_mask[positions]]
        row: dict[str, Any] = dict(zip(GROUP_COLUMNS, keys))
        row["n_images"] = int(len(good_positions))
        row["n_failed"] = int(len(positions) - len(good_positions))
        for col in columns:
            values = values_of[col][good_positions]
            if col in medians:  # declared so (core/columns.py): the median with its bootstrap interval
                row[f"{col}_median"], row[f"{col}_ci_low"], row[f"{col}_ci_high"], _ = bootstrap_ci(
                    values, statistic=np.median
                )
            else:
                mean, low, high, _ = mean_ci(values)
                row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = mean, low, high
            if col in with_inf:
                row[f"{col}_n_inf"] = int(np.isinf(values).sum())
        info = metric_info(run_info, row["metric"])
        info.update(attack=row["attack"], defence=row["defence"])
        if summaries and len(good_positions):
            good = df.iloc[good_positions]
            for score in summaries:
                row.update(_run_summary(score, good, info))
        rows.append(row)
    return pd.DataFrame(rows)


def _run_summary(score: Any, group: pd.DataFrame, info: dict[str, Any]) -> dict[str, float]:
    if len(group) == 0:
        return {}
    name = getattr(score, "name", type(score).__name__)
    try:
        values = score.summarise(group, dict(info))
    except Exception as exc:  # noqa: BLE001 - one broken (third-party) score must not sink the report
        warnings.warn(
            f"summary score {name!r} failed on {info['label']} / {info['attack']} / "
            f"{info['defence']}: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}
    return {str(k): float(v) for k, v in (values or {}).items()}


# -- gains valid for every metric ----------------------------------------------------------------
class ScoreWarning(UserWarning):
    """A score of the run cannot be read as it usually is (the paper's gain of a metric that reaches 0)."""


#: |f(x)| below this share of the metric's range makes the paper's gain |f(x) - f(D(x_a))| / f(x) explode.
NEAR_ZERO_SHARE = 0.01


def paper_gain(f_ref: Any, f_other: Any) -> np.ndarray:
    """The paper's gain |f(x) - f(D(x_a))| / f(x) per image, NaN where f(x) = 0.

    adversarial_purification ``test.py`` divides by the clean score itself (not its absolute value), so a
    metric whose scores reach 0 or below gets negative or exploding gains (:func:`score_warnings`;
    :func:`normalised_gain` is valid for every metric). The one formula: the ``gain`` score plugin stores
    it per cell, the report's tables and the end-of-run summary average it.
    """
    ref = np.asarray(f_ref, dtype=float)
    other = np.asarray(f_other, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(ref - other) / ref
    return np.where(ref == 0, np.nan, out)


def normalised_gain(f_ref: Any, f_other: Any, span: float) -> np.ndarray:
    """|f_ref - f_other| / span: the gain as a share of the metric's range (high - low).

    The MSU codes' ``abs_gain`` (adversarial-defenses-for-iqa) and, up to the scale, the robustness
    benchmark's min-max normalised absolute gain; unlike |f(x) - f(D(x_a))| / f(x) it is >= 0, bounded
    by the attacked excursion and comparable between metrics, whatever the sign of their scores.
    """
    ref = np.asarray(f_ref, dtype=float)
    other = np.asarray(f_other, dtype=float)
    return np.abs(ref - other) / (float(span) if span else 1.0)


def score_warnings(metrics: dict[str, Any], df: pd.DataFrame | None = None) -> list[str]:
    """One line per metric whose paper gain |f(x) - f(D(x_a))| / f(x) cannot be trusted.

    ``metrics`` is ``run.json``'s ``metrics`` (label -> ``range``, ``higher_is_better``). A range that
    goes below 0 says so before any cell is computed (a range starting at 0, as most metrics', does not:
    scores of exactly 0 are rare); with the result table ``df`` the lines also count the images whose
    clean score is <= 0 (negative gain) or within 1% of the range above 0 (a gain that explodes). The
    ranking uses :func:`normalised_gain`, valid for every metric.
    """
    lines = []
    ok = ok_rows(df) if df is not None and len(df) and "metric" in df.columns else None
    for label, entry in (metrics or {}).items():
        info = metric_info({"metrics": metrics}, label)
        low, high = info["range"]
        span = metric_span(info)
        problems = []
        if low < 0:
            problems.append(f"its range ({low:g}, {high:g}) goes below 0")
        if ok is not None and "f_clean" in ok.columns:
            mine = ok[ok["metric"] == label]
            if "image" in mine.columns:
                mine = mine.drop_duplicates("image")  # f(x) is one value per image
            f_x = pd.to_numeric(mine["f_clean"], errors="coerce").to_numpy(float)
            f_x = f_x[np.isfinite(f_x)]
            negative = int((f_x <= 0).sum())
            tiny = int(((f_x > 0) & (f_x < NEAR_ZERO_SHARE * span)).sum())
            if negative:
                problems.append(
                    f"{negative} of {len(f_x)} images have a clean score f(x) <= 0 (their gain "
                    f"is negative or undefined)"
                )
            if tiny:
                problems.append(
                    f"{tiny} of {len(f_x)} images have f(x) within {NEAR_ZERO_SHARE:.0%} of the "
                    f"range above 0 (their gain explodes)"
                )
        if problems:
            lines.append(
                f"metric {label}: {'; '.join(problems)}: the paper's gain |f(x) - f(D(x_a))| / f(x) "
                f"can be negative or unbounded, so defences are ranked by the range-normalised gain "
                f"|f(x) - f(D(x_a))| / (high - low) (docs/scores.md); the gain column is kept as "
                f"the reference computes it"
            )
    return lines


#: Resamples of the bootstrap intervals of the report's rankings.
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(
    values: Iterable[float],
    confidence: float = CONFIDENCE,
    seed: int = 0,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    statistic: Any = np.mean,
) -> tuple[float, float, float, int]:
    """Mean (or ``statistic``, a numpy reduction taking ``axis``) and its BCa bootstrap interval
    (``scipy.stats.bootstrap``, seeded: the report repeats).

    Returns ``(mean, low, high, n)`` over the finite values; NaN interval below two values, the mean
    itself when all values are equal (BCa is undefined there).
    """
    arr = _finite(values)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(statistic(arr))
    if n < 2:
        return mean, math.nan, math.nan, n
    if np.ptp(arr) == 0:
        return mean, mean, mean, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-jackknife warning: the percentile fallback below
        res = stats.bootstrap(
            (arr,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (arr,),
                statistic,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method="percentile",
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return mean, low, high, n


def warn_scores(metrics: dict[str, Any], df: pd.DataFrame | None = None) -> list[str]:
    """Issue each line of :func:`score_warnings` as a :class:`ScoreWarning` (the run calls this); returns them."""
    lines = score_warnings(metrics, df)
    for line in lines:
        warnings.warn(line, ScoreWarning, stacklevel=2)
    return lines
