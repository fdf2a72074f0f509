"""Summary of certified defences (docs/certified.md): how wide the certificates are, how often they cover
the attack, and what smoothing costs on clean images. SROCC of f_s with MOS and with f(x) come from the
``srocc`` score (``srocc_mos_def_clean``, ``srocc_clean_def_clean``: f_s is a certified row's f(D(x)))."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from iqadef import ScoreColumn, SummaryScore, hookimpl, metric_span


def _share(flags: pd.Series) -> float:
    values = flags.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


class CertifiedSummary(SummaryScore):
    """Per metric x attack x certified defence: ``cert_width_median`` (median width u - l of the clean
    images' certified intervals, score units) and ``cert_width_norm`` (its mean over the metric's range);
    ``cert_applies_share`` (attacked images within the radius, ||x_a - x||_2 <= eps);
    ``cert_f_adv_inside_share`` (f(x_a) of the plain metric inside the clean image's interval);
    ``cert_holds_share`` (f_s(x_a) inside it, among the images within the radius: the guarantee says >= 1 -
    alpha); ``smoothing_cost`` (mean |f_s(x) - f(x)|, score units) and ``smoothing_cost_norm`` (over the
    range). Radius certificates (rs, drs, ddrs, densepure) add ``cert_radius_median`` (median certified radius of the
    clean images, 0 where abstained), ``cert_abstain_share``, ``cert_accuracy`` (share whose smoothed bin is the
    bin of f(x), certified at radius >= eps) and ``cert_bin_kept_share`` (attacked images within the clean
    image's radius whose smoothed bin stayed: the guarantee says >= 1 - alpha). Groups without certificate
    columns (the purifiers') get none of these."""

    name = "certified"
    columns = (
        ScoreColumn("cert_applies_share"),
        ScoreColumn("smoothing_cost", "lower"),
        ScoreColumn("smoothing_cost_norm", "lower"),
        ScoreColumn("cert_width_median", "lower"),
        ScoreColumn("cert_width_norm", "lower"),
        ScoreColumn("cert_f_adv_inside_share", "higher"),
        ScoreColumn("cert_holds_share", "higher"),
        ScoreColumn("cert_radius_median", "higher"),
        ScoreColumn("cert_abstain_share", "lower"),
        ScoreColumn("cert_accuracy", "higher"),
        ScoreColumn("cert_bin_kept_share", "higher"),
    )

    def summarise(self, group: pd.DataFrame, info: dict) -> dict[str, float]:
        if "cert_radius" not in group.columns or group["cert_radius"].isna().all():
            return {}
        span = metric_span(info)
        cost = (group["f_def_clean"] - group["f_clean"]).abs().to_numpy(dtype=float)
        out = {
            "cert_applies_share": _share(group["cert_applies"]),
            "smoothing_cost": float(np.nanmean(cost)) if np.isfinite(cost).any() else math.nan,
        }
        out["smoothing_cost_norm"] = out["smoothing_cost"] / span
        if "cert_width_clean" in group.columns and group["cert_width_clean"].notna().any():
            width = group["cert_width_clean"].to_numpy(dtype=float)
            out["cert_width_median"] = float(np.nanmedian(width))
            out["cert_width_norm"] = float(np.nanmean(width)) / span
            out["cert_f_adv_inside_share"] = _share(group["cert_f_adv_inside"])
            within = group["cert_applies"] == 1.0
            out["cert_holds_share"] = _share(group.loc[within, "cert_fs_adv_inside"]) if within.any() else math.nan
        if "cert_radius_clean" in group.columns and group["cert_radius_clean"].notna().any():
            radius = group["cert_radius_clean"].to_numpy(dtype=float)
            label = group["cert_bin_clean"].to_numpy(dtype=float)
            truth = group["cert_bin_f_clean"].to_numpy(dtype=float)
            eps = group["cert_radius"].to_numpy(dtype=float)
            out["cert_radius_median"] = float(np.nanmedian(radius))
            out["cert_abstain_share"] = _share(group["cert_abstain_clean"])
            out["cert_accuracy"] = float(np.mean((label >= 0) & (label == truth) & (radius >= eps)))
            out["cert_bin_kept_share"] = _share(group["cert_bin_kept"])
        return out


@hookimpl
def iqadef_register_scores(register):
    register(CertifiedSummary)
