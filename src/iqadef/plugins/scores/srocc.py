"""Spearman rank correlations of the metric with MOS, before and after attack and defence."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from iqadef import ScoreColumn, SummaryScore, correlation_ci, hookimpl

#: output name -> (reference column, compared column); names follow adversarial-defenses-for-iqa.
PAIRS = {
    "srocc_mos_clean": ("mos", "f_clean"),  # clear_srocc_mos
    "srocc_mos_adv": ("mos", "f_adv"),  # attacked_srocc_mos
    "srocc_mos_def_clean": ("mos", "f_def_clean"),  # robust_clear_srocc_mos
    "srocc_mos_def_adv": ("mos", "f_def_adv"),  # robust_attacked_srocc_mos
    "srocc_clean_def_clean": ("f_clean", "f_def_clean"),  # robust_clear_srocc_clear
}


def spearman(a, b) -> tuple[float, int]:
    """Spearman's rho (scipy.stats.spearmanr) over the pairs where both values are finite, and n."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    n = int(keep.sum())
    if n < 3:
        return math.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: rho is NaN, which is the honest answer
        rho = stats.spearmanr(a[keep], b[keep])[0]
    return float(rho), n


class Srocc(SummaryScore):
    """SROCC of MOS with f(x), f(x_a), f(D(x)), f(D(x_a)), and of f(x) with f(D(x)), with 95% CIs.

    Columns ``srocc_mos_clean``, ``srocc_mos_adv``, ``srocc_mos_def_clean``, ``srocc_mos_def_adv``,
    ``srocc_clean_def_clean`` and ``<name>_ci_low/_ci_high`` (Fisher z, variance 1.06/(n-3)).
    The MOS ones are NaN when the run has no MOS file. Needs at least 3 images (4 for a CI).
    """

    name = "srocc"
    report_order = 40
    columns = tuple(ScoreColumn(name, "higher", key=True) for name in PAIRS)

    def summarise(self, group: pd.DataFrame, info: dict) -> dict[str, float]:
        out = {}
        for name, (ref, other) in PAIRS.items():
            if ref not in group.columns or other not in group.columns:
                rho, n = math.nan, 0
            else:
                rho, n = spearman(group[ref], group[other])
            low, high = correlation_ci(rho, n)
            out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = rho, low, high
        return out


@hookimpl
def iqadef_register_scores(register):
    register(Srocc)
