"""Fine-tuned metrics beside their originals: what a metric trained by ``iqadef train-robust`` pays in accuracy
for what it gains in robustness (the robust-training literature reports both: clean SROCC/PLCC against MOS and
the attacked gain; e.g. the MSU robustness benchmark's robust metrics, Gushchin et al. ICML 2025).

A fine-tuned metric is one whose ``run.json`` entry has ``trained`` (its weights carry a ``train-robust``
record: plan/grid.py); its original is a metric of the run with the same plugin ``name`` and no
``trained``. Per pair, over the images both scored:

* ``accuracy``: Pearson and Spearman correlation of the two metrics' clean scores f(x) (how far the fine-tuned
  metric moved from the original), and each one's SROCC/PLCC against MOS where the run has MOS;
* ``robustness``: per attack, the mean normalised gain |f(x) - f(x_a)| / (high - low) of each metric with no
  defence (the metric alone under attack), the fine-tuned minus the original's (negative: more robust), and,
  for a ``protocol:`` run, the worst-case verdict's gain of the no-defence row at the headline budget.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from iqadef.analysis.scores import metric_info, metric_span, normalised_gain, ok_rows
from iqadef.report.glance import baseline_defences

ACCURACY_COLUMNS = (
    "original",
    "fine_tuned",
    "method",
    "training_images",
    "n_images",
    "pearson_clean",
    "spearman_clean",
    "srocc_mos_original",
    "srocc_mos_fine_tuned",
    "plcc_mos_original",
    "plcc_mos_fine_tuned",
)
ROBUSTNESS_COLUMNS = (
    "original",
    "fine_tuned",
    "attack",
    "norm_gain_original",
    "norm_gain_fine_tuned",
    "gain_change",
    "n_images",
)
WORST_CASE_ROW = "worst case (verdict)"


def metric_pairs(run_info: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(original, fine-tuned) labels: each metric with ``trained`` beside the untrained metric of its plugin that
    its record names as the one it was trained from (``trained.from``), else beside each untrained one."""
    metrics = (run_info or {}).get("metrics", {}) or {}
    originals = [label for label, entry in metrics.items() if not (entry or {}).get("trained")]
    pairs = []
    for label, entry in metrics.items():
        trained = (entry or {}).get("trained")
        if not trained:
            continue
        mine = [o for o in originals if metrics[o].get("name") == entry.get("name")]
        named = [o for o in mine if o == trained.get("from")]
        pairs += [(original, label) for original in (named or mine)]
    return pairs


def _correlation(kind: str, a: Any, b: Any) -> float:
    """Pearson or Spearman correlation over the finite pairs; NaN below 3 pairs or for a constant input."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = stats.pearsonr if kind == "pearson" else stats.spearmanr
        return float(test(a[keep], b[keep])[0])


def _clean_scores(good: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per image of ``metric``: f(x) and MOS (f(x) does not depend on the attack or defence)."""
    mine = good[good["metric"] == metric]
    columns = ["f_clean"] + (["mos"] if "mos" in mine.columns else [])
    return mine.groupby("image", sort=False)[columns].first()


def accuracy_table(df: pd.DataFrame, run_info: dict[str, Any] | None) -> pd.DataFrame:
    """One row per (original, fine-tuned) pair: clean-score agreement and each metric's accuracy against MOS."""
    pairs = metric_pairs(run_info)
    if not pairs or df.empty or not {"metric", "image", "f_clean"} <= set(df.columns):
        return pd.DataFrame(columns=list(ACCURACY_COLUMNS))
    good = ok_rows(df)
    metrics = run_info["metrics"]
    rows = []
    for original, tuned in pairs:
        both = pd.merge(
            _clean_scores(good, original),
            _clean_scores(good, tuned),
            left_index=True,
            right_index=True,
            suffixes=("_o", "_t"),
        )
        if both.empty:
            continue
        trained = metrics[tuned].get("trained") or {}
        row = {
            "original": original,
            "fine_tuned": tuned,
            "method": trained.get("method"),
            "training_images": trained.get("images"),
            "n_images": len(both),
            "pearson_clean": _correlation("pearson", both["f_clean_o"], both["f_clean_t"]),
            "spearman_clean": _correlation("spearman", both["f_clean_o"], both["f_clean_t"]),
        }
        mos = both["mos_o"] if "mos_o" in both.columns else pd.Series(math.nan, index=both.index)
        for suffix, who in (("o", "original"), ("t", "fine_tuned")):
            row[f"srocc_mos_{who}"] = _correlation("spearman", mos, both[f"f_clean_{suffix}"])
            row[f"plcc_mos_{who}"] = _correlation("pearson", mos, both[f"f_clean_{suffix}"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(ACCURACY_COLUMNS))


def _undefended_gains(good: pd.DataFrame, run_info: dict[str, Any], metric: str) -> pd.DataFrame:
    """Per (attack, image) of ``metric`` with no defence: the normalised gain |f(x) - f(D(x_a))| / span."""
    mine = good[good["metric"] == metric]
    mine = mine[mine["defence"].isin(baseline_defences(list(dict.fromkeys(mine["defence"])), run_info))]
    span = metric_span(metric_info(run_info, metric))
    gains = mine.assign(norm_gain=normalised_gain(mine["f_clean"], mine["f_def_adv"], span))
    return gains.groupby(["attack", "image"], sort=False)["norm_gain"].mean()


def robustness_table(
    df: pd.DataFrame, run_info: dict[str, Any] | None, verdict_ranking: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per pair and attack: each metric's mean normalised gain with no defence over the images both have, and
    the difference (fine-tuned - original); a last row per pair with the worst-case verdict's gain of the
    no-defence row when the run has a verdict (``verdict_ranking``: :class:`~iqadef.analysis.verdict.Verdict`'s
    ``ranking``, the headline budget)."""
    pairs = metric_pairs(run_info)
    needed = {"metric", "image", "attack", "defence", "f_clean", "f_def_adv"}
    if not pairs or df.empty or not needed <= set(df.columns):
        return pd.DataFrame(columns=list(ROBUSTNESS_COLUMNS))
    good = ok_rows(df)
    rows = []
    for original, tuned in pairs:
        both = pd.concat(
            {"o": _undefended_gains(good, run_info, original), "t": _undefended_gains(good, run_info, tuned)},
            axis=1,
            join="inner",
        ).dropna()
        for attack, per_image in both.groupby(level="attack", sort=False):
            o, t = float(per_image["o"].mean()), float(per_image["t"].mean())
            rows.append(
                {
                    "original": original,
                    "fine_tuned": tuned,
                    "attack": attack,
                    "norm_gain_original": o,
                    "norm_gain_fine_tuned": t,
                    "gain_change": t - o,
                    "n_images": len(per_image),
                }
            )
        worst = _worst_case(verdict_ranking, run_info, original, tuned)
        if worst is not None:
            rows.append({"original": original, "fine_tuned": tuned, **worst})
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))


def _worst_case(
    ranking: pd.DataFrame | None, run_info: dict[str, Any], original: str, tuned: str
) -> dict[str, Any] | None:
    """The verdict's worst-case gain of each metric's no-defence row at the headline budget, or None."""
    if ranking is None or ranking.empty or not {"metric", "defence", "gain_worst"} <= set(ranking.columns):
        return None
    gains, budget = {}, ""
    for who, metric in (("original", original), ("fine_tuned", tuned)):
        mine = ranking[ranking["metric"] == metric]
        base = mine[mine["defence"].isin(baseline_defences(list(mine["defence"]), run_info))]
        if base.empty:
            return None
        gains[who] = float(base["gain_worst"].iloc[0])
        budget = str(base["budget"].iloc[0]) if "budget" in base.columns else ""
    return {
        "attack": f"{WORST_CASE_ROW}{', ' + budget if budget else ''}",
        "norm_gain_original": gains["original"],
        "norm_gain_fine_tuned": gains["fine_tuned"],
        "gain_change": gains["fine_tuned"] - gains["original"],
        "n_images": None,
    }


def robust_metrics_section(
    df: pd.DataFrame, run_info: dict[str, Any] | None, verdict_ranking: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame] | None:
    """The section's two tables, or None when the run has no fine-tuned metric beside its original."""
    accuracy = accuracy_table(df, run_info)
    robustness = robustness_table(df, run_info, verdict_ranking)
    if accuracy.empty and robustness.empty:
        return None
    return {"accuracy": accuracy, "robustness": robustness}
