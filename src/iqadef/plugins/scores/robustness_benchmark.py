"""The MSU metrics-robustness-benchmark scores, applied to clean vs purified-attacked metric values."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from iqadef import hookimpl
from iqadef.core.scores import SummaryScore, mean_ci

EPS = 1e-6


def min_max_fit(source: np.ndarray) -> tuple[float, float]:
    """(offset, scale) of a min-max scaler fitted on ``source`` (scale 1 when all values are equal)."""
    low, high = float(np.min(source)), float(np.max(source))
    span = high - low
    return low, (span if span != 0 else 1.0)


def robustness_score(source, proc, beta1: float = 1.0, beta2: float = 0.0, eps: float = EPS):
    """Per-image ``log10(max(beta1 - s, s - beta2) / (|s - s'| + eps))`` on min-max scaled values."""
    s, p = _scaled(source, proc)
    return np.log10(np.maximum(beta1 - s, s - beta2) / (np.abs(s - p) + eps))


def normalized_absolute_gain(source, proc, sign: float = 1.0):
    """Per-image ``sign * (s' - s)`` on min-max scaled values."""
    s, p = _scaled(source, proc)
    return sign * (p - s)


def normalized_relative_gain(source, proc, sign: float = 1.0):
    """Per-image ``sign * ((s' + 1) - (s + 1)) / (s + 1)`` on min-max scaled values."""
    s, p = _scaled(source, proc)
    return sign * (p - s) / (s + 1.0)


def relative_gain_classic(source, proc, eps: float = EPS):
    """Per-image ``(s' - s) / (s + eps)`` on raw values (no scaling, no sign)."""
    s, p = np.asarray(source, float), np.asarray(proc, float)
    return (p - s) / (s + eps)


def wasserstein_score(source, proc, sign: float = 1.0) -> float:
    """``sign * W1(s, s') * sign(mean s' - mean s)`` on min-max scaled values."""
    s, p = _scaled(source, proc)
    return float(sign * stats.wasserstein_distance(s, p) * np.sign(p.mean() - s.mean()))


def energy_distance_score(source, proc, sign: float = 1.0) -> float:
    """``sign * energy_distance(s, s') * sign(mean s' - mean s)`` on min-max scaled values."""
    s, p = _scaled(source, proc)
    return float(sign * stats.energy_distance(s, p) * np.sign(p.mean() - s.mean()))


def _scaled(source, proc) -> tuple[np.ndarray, np.ndarray]:
    source = np.asarray(source, dtype=float)
    proc = np.asarray(proc, dtype=float)
    offset, scale = min_max_fit(source)
    return (source - offset) / scale, (proc - offset) / scale


class MsuRobustness(SummaryScore):
    """MSU benchmark scores of f(x) -> f(D(x_a)): robustness score, normalised gains, W1 and energy.

    Min-max scaler fitted on the group's clean scores f(x); robustness score with beta1 = 1,
    beta2 = 0, eps = 1e-6; gains and distances are negated for lower-is-better metrics (the
    reference's ``inverse_sign``). Per-image scores get a mean and a 95% t-interval; the two
    distribution distances are single numbers. Source: MSU_Metrics_Robustness_Benchmark
    ``score_methods.py`` and ``interface.py``.
    """

    name = "msu-robustness"

    def summarise(self, group: pd.DataFrame, info: dict) -> dict[str, float]:
        pairs = group[["f_clean", "f_def_adv"]].to_numpy(dtype=float)
        pairs = pairs[np.isfinite(pairs).all(axis=1)]
        if len(pairs) == 0:
            return {}
        source, proc = pairs[:, 0], pairs[:, 1]
        sign = 1.0 if info.get("higher_is_better", True) else -1.0
        per_image = {
            "robustness_score": robustness_score(source, proc),
            "normalized_absolute_gain": normalized_absolute_gain(source, proc, sign),
            "normalized_relative_gain": normalized_relative_gain(source, proc, sign),
            "relative_gain_classic": relative_gain_classic(source, proc),
        }
        out = {}
        for name, values in per_image.items():
            mean, low, high, _ = mean_ci(values)
            out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = mean, low, high
        out["wasserstein_score"] = wasserstein_score(source, proc, sign)
        out["energy_distance_score"] = energy_distance_score(source, proc, sign)
        return out


@hookimpl
def iqadef_register_scores(register):
    register(MsuRobustness)
