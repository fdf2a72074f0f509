"""Certified accuracy against the radius: the standard plot of the randomized-smoothing literature (Cohen et al.
2019, Fig. 1; the certified-IQA study's radius tables), for the certified defences that certify a radius
(``rs``, ``drs``, ``ddrs``: the columns ``cert_radius_clean``, ``cert_bin_clean``, ``cert_bin_f_clean``).

For each metric x radius-type certified defence and each radius r, over the clean images: the share whose
smoothed bin is the bin of the plain metric's f(x) and is certified at radius >= r (*certified accuracy*),
and the share certified at radius >= r whatever its bin (*certified share*). Abstentions count as neither."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    correct = certified & (clean["cert_bin_clean"].to_numpy(dtype=float) == clean["cert_bin_f_clean"].to_numpy(dtype=float))
    n = max(len(clean), 1)
    return pd.DataFrame({"radius": radii,
                         "certified_accuracy": [float((correct & (radius >= r)).sum()) / n for r in radii],
                         "certified_share": [float((certified & (radius >= r)).sum()) / n for r in radii]})


def radius_grid(df: pd.DataFrame, metric: str, points: int = 60) -> np.ndarray:
    """``points`` radii from 0 to a little past the largest certified radius of ``metric``."""
    rows = df[(df["metric"] == metric) & df["cert_radius_clean"].notna()]
    top = float(np.nanmax(rows["cert_radius_clean"].to_numpy(dtype=float))) if len(rows) else 0.0
    return np.linspace(0.0, max(top * 1.05, 1e-3), points)
