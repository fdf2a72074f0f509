"""Certified accuracy against the radius: the standard plot of the randomized-smoothing literature (Cohen et al.
2019, Fig. 1; the certified-IQA study's radius tables), for the certified defences that certify a radius
(``rs``, ``drs``, ``ddrs``, ``densepure``: the columns ``cert_radius_clean``, ``cert_bin_clean``, ``cert_bin_f_clean``).

For each metric x radius-type certified defence and each radius r, over the clean images: the share whose
smoothed bin is the bin of the plain metric's f(x) and is certified at radius >= r (*certified accuracy*),
and the share certified at radius >= r whatever its bin (*certified share*). Abstentions count as neither."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from iqadef.analysis.scores import metric_info, metric_span

RADIUS_COLUMNS = ("cert_radius_clean", "cert_bin_clean", "cert_bin_f_clean")


def radius_defences(df: pd.DataFrame, metric: str) -> list[str]:
    """The defences of ``metric`` whose rows carry a radius certificate, in table order."""
    if not set(RADIUS_COLUMNS) <= set(df.columns):
        return []
    rows = df[(df["metric"] == metric) & df["cert_radius_clean"].notna()]
    return list(dict.fromkeys(rows["defence"]))


def certified_curve(df: pd.DataFrame, metric: str, defence: str, radii: np.ndarray) -> pd.DataFrame:
    """``radius``, ``certified_accuracy``, ``certified_share`` at each of ``radii``, over the distinct clean
    images of (metric, defence) (every attack's row of an image has the same clean certificate)."""
    rows = df[(df["metric"] == metric) & (df["defence"] == defence) & df["cert_radius_clean"].notna()]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    clean = rows.drop_duplicates("image")
    radius = clean["cert_radius_clean"].to_numpy(dtype=float)
    certified = clean["cert_bin_clean"].to_numpy(dtype=float) >= 0
    correct = certified & (
        clean["cert_bin_clean"].to_numpy(dtype=float) == clean["cert_bin_f_clean"].to_numpy(dtype=float)
    )
    n = max(len(clean), 1)
    return pd.DataFrame(
        {
            "radius": radii,
            "certified_accuracy": [float((correct & (radius >= r)).sum()) / n for r in radii],
            "certified_share": [float((certified & (radius >= r)).sum()) / n for r in radii],
        }
    )


def radius_grid(df: pd.DataFrame, metric: str, points: int = 60) -> np.ndarray:
    """``points`` radii from 0 to a little past the largest certified radius of ``metric``."""
    rows = df[(df["metric"] == metric) & df["cert_radius_clean"].notna()]
    top = float(np.nanmax(rows["cert_radius_clean"].to_numpy(dtype=float))) if len(rows) else 0.0
    return np.linspace(0.0, max(top * 1.05, 1e-3), points)


# -- the certified section's table: coverage, width, cost, and what would cover the run's attacks -------------
CERTIFIED_COLUMNS = (
    "metric",
    "defence",
    "kind",
    "eps",
    "sigma",
    "n",
    "cells",
    "covered",
    "covered_share",
    "uncertified_share",
    "width_norm",
    "smoothing_cost_norm",
    "fs_min",
    "fs_max",
    "fs_outside_share",
    "f_outside_share",
    "adv_l2_median",
    "adv_l2_q90",
    "adv_l2_max",
    "eps_to_cover",
    "sigma_to_cover",
)
#: The quantile of the attacks' L2 distance that the suggested eps covers beside their maximum.
COVER_QUANTILE = 0.9


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _outside(values: np.ndarray, low: float, high: float) -> float:
    values = values[np.isfinite(values)]
    return float(((values < low) | (values > high)).mean()) if values.size else math.nan


def sigma_to_cover(eps: float, n: float, alpha: float, kind: str) -> float:
    """The smallest sigma whose certificate at the run's ``n`` and ``alpha`` can reach radius ``eps``.

    Radius kind (rs: Cohen et al. 2019, CERTIFY): with all n copies in one class the Clopper-Pearson bound is
    ``alpha**(1/n)``, so the largest radius is ``sigma * Phi^-1(alpha**(1/n))``. Interval kind (median
    smoothing: Chiang et al. 2020): the lower order statistic exists only when ``Phi(eps/sigma)**n <= alpha/2``
    (docs/certified.md), so ``sigma >= eps / Phi^-1((alpha/2)**(1/n))``; mean smoothing's interval exists
    for any sigma but widens with eps/sigma, for which this is a useful scale too."""
    from scipy import stats

    if not (np.isfinite(eps) and np.isfinite(n) and np.isfinite(alpha)) or n < 1 or not 0 < alpha < 1:
        return math.nan
    level = alpha ** (1.0 / n) if kind == "radius" else (alpha / 2.0) ** (1.0 / n)
    z = float(stats.norm.ppf(level))
    return eps / z if z > 0 else math.inf


def certified_table(df: pd.DataFrame, run_info: dict | None) -> pd.DataFrame:
    """Per metric x certified defence (``run.json``'s ``certified``): how many cells the certificate covers
    (``cert_applies``: the attack's ``adv_l2`` within eps), the clean interval's mean width over the metric's
    range (interval kind), the smoothing cost mean |f_s(x) - f(x)| over the range, the range of f_s(x) and the
    share of images whose f_s(x) leaves the metric's declared range, the attacks' L2 distances, and the eps
    (their maximum) and sigma (:func:`sigma_to_cover`) a certificate at the run's n would need to cover
    them all."""

    certified = (run_info or {}).get("certified") or {}
    if not certified or "defence" not in df.columns or "cert_radius" not in df.columns:
        return pd.DataFrame(columns=list(CERTIFIED_COLUMNS))
    rows = []
    for metric in dict.fromkeys(df["metric"]):
        info = metric_info(run_info, metric)
        span, (low, high) = metric_span(info), info["range"]
        for label, entry in certified.items():
            cells = df[(df["metric"] == metric) & (df["defence"] == label)]
            if "status" in cells.columns:
                cells = cells[cells["status"] == "ok"]
            if cells.empty:
                continue
            radius_kind = "cert_radius_clean" in cells.columns and cells["cert_radius_clean"].notna().any()
            kind = "radius" if radius_kind else "interval"
            applies = cells["cert_applies"].to_numpy(dtype=float)
            l2 = cells["adv_l2"].to_numpy(dtype=float) if "adv_l2" in cells.columns else np.array([])
            l2 = l2[np.isfinite(l2)]
            clean = cells.drop_duplicates("image") if "image" in cells.columns else cells
            f_s = clean["f_def_clean"].to_numpy(dtype=float)
            f_s = f_s[np.isfinite(f_s)]
            cost = np.abs(clean["f_def_clean"].to_numpy(dtype=float) - clean["f_clean"].to_numpy(dtype=float))
            width = (
                clean["cert_width_clean"].to_numpy(dtype=float) if "cert_width_clean" in clean.columns else np.array([])
            )
            # an infinite width: no interval at this n (the order statistic does not exist), no certificate
            uncertified = float(np.mean(~np.isfinite(width))) if kind == "interval" and width.size else math.nan
            width = width[np.isfinite(width)]
            eps, sigma, n, alpha = (_float(entry.get(k)) for k in ("eps", "sigma", "n", "alpha"))
            eps_needed = float(l2.max()) if l2.size else math.nan
            rows.append(
                {
                    "metric": metric,
                    "defence": label,
                    "kind": kind,
                    "eps": eps,
                    "sigma": sigma,
                    "n": n,
                    "cells": int(np.isfinite(applies).sum()),
                    "covered": int(np.nansum(applies == 1.0)),
                    "covered_share": float(np.nanmean(applies)) if np.isfinite(applies).any() else math.nan,
                    "uncertified_share": uncertified,
                    "width_norm": float(width.mean()) / span if kind == "interval" and width.size else math.nan,
                    "smoothing_cost_norm": float(np.nanmean(cost)) / span if np.isfinite(cost).any() else math.nan,
                    "fs_min": float(f_s.min()) if f_s.size else math.nan,
                    "fs_max": float(f_s.max()) if f_s.size else math.nan,
                    "fs_outside_share": _outside(f_s, low, high),
                    "f_outside_share": _outside(clean["f_clean"].to_numpy(dtype=float), low, high),
                    "adv_l2_median": float(np.median(l2)) if l2.size else math.nan,
                    "adv_l2_q90": float(np.quantile(l2, COVER_QUANTILE)) if l2.size else math.nan,
                    "adv_l2_max": eps_needed,
                    "eps_to_cover": eps_needed,
                    "sigma_to_cover": sigma_to_cover(eps_needed, n, _float(entry.get("alpha", 0.001)), kind),
                }
            )
    return pd.DataFrame(rows, columns=list(CERTIFIED_COLUMNS))


def certified_warnings(table: pd.DataFrame, run_info: dict | None) -> list[str]:
    """One line per certified defence whose certificate covers few of the attacks, or whose f_s(x) leaves
    the metric's declared range (then the certified interval, clipped or binned to that range, and the gain
    describe another score than the metric's)."""

    out = []
    for row in table.itertuples(index=False):
        low, high = metric_info(run_info, row.metric)["range"]
        if row.cells and row.covered_share < 0.5:
            out.append(
                f"{row.defence} ({row.metric}): the certificate covers {row.covered} of {row.cells} cells "
                f"(eps {row.eps:.4g}, the attacks' L2 distance is {row.adv_l2_median:.4g} median, "
                f"{row.adv_l2_max:.4g} max): a certificate for eps >= {row.eps_to_cover:.4g} needs "
                f"sigma >= {row.sigma_to_cover:.4g} at n = {row.n:.0f}."
            )
        if np.isfinite(row.uncertified_share) and row.uncertified_share > 0:
            out.append(
                f"{row.defence} ({row.metric}): no certified interval for {row.uncertified_share:.0%} of the "
                f"clean images (the interval is infinite: n = {row.n:.0f} is too small for eps/sigma = "
                f"{row.eps / row.sigma:.3g}; docs/certified.md)."
            )
        if np.isfinite(row.fs_outside_share) and row.fs_outside_share > 0:
            cause = (
                ": the noise drives the metric off its scale"
                if row.fs_outside_share > (row.f_outside_share or 0)
                else ""
            )
            out.append(
                f"{row.defence} ({row.metric}): the smoothed score f_s(x) leaves the metric's range "
                f"{low:g}..{high:g} on {row.fs_outside_share:.0%} of the images (from {row.fs_min:.4g} to "
                f"{row.fs_max:.4g}; the plain f(x) on {row.f_outside_share:.0%}){cause}."
            )
    return out
