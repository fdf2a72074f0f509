"""The MSU metrics-robustness-benchmark scores, applied to clean vs purified-attacked metric values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from iqadef import ConfigError, Param, ScoreColumn, SummaryScore, hookimpl, mean_ci

from ._domain import load_domain_maps, metric_key

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

    ``domain: mdtvsfa`` first maps both score columns into MDTVSFA's domain, as the benchmark's
    ``domain_transform`` does (off by default there too); the maps are fitted per metric, so they come from
    ``domain_maps``: the benchmark's ``models_to_mdtvsfa_1d.pth`` or a JSON of knots (see ``_domain``).
    Columns then carry the suffix ``_mdtvsfa``.
    """

    name = "msu-robustness"
    report_order = 50
    #: The benchmark's directions: a higher robustness score, lower gains; the signed distances have none.
    columns = (
        ScoreColumn("robustness_score", "higher", key=True),
        *(
            ScoreColumn(n, "lower", key=True)
            for n in ("normalized_absolute_gain", "normalized_relative_gain", "relative_gain_classic")
        ),
        ScoreColumn("wasserstein_score", key=True),
        ScoreColumn("energy_distance_score", key=True),
    )
    params = (
        Param(
            "domain",
            str,
            "raw",
            choices=("raw", "mdtvsfa"),
            help="score raw metric values (reference default) or values mapped into MDTVSFA's domain",
        ),
        Param(
            "domain_maps",
            Path,
            None,
            help="per-metric maps for domain mdtvsfa: models_to_mdtvsfa_1d.pth of "
            "MSU_Metrics_Robustness_Benchmark, or JSON {metric: {x: [...], y: [...]}}",
        ),
        Param("domain_seed", int, 0, help="seed of the benchmark map's noise draw (it averages 512 draws)"),
    )
    domain: str
    domain_maps: str | None
    domain_seed: int

    def __init__(self, where: str | None = None, **values):
        super().__init__(where, **values)
        self.maps = None
        if self.domain != "raw":
            if self.domain_maps is None:
                raise ConfigError(
                    f"{where or self.name}.domain_maps: domain {self.domain!r} needs the per-metric "
                    f"maps; give robustness_benchmark/models/models_to_mdtvsfa_1d.pth of "
                    f"msu-video-group/MSU_Metrics_Robustness_Benchmark or a JSON file of knots"
                )
            self.maps = load_domain_maps(self.domain_maps, self.domain_seed)

    def to_domain(self, values: np.ndarray, info: dict) -> np.ndarray:
        """``values`` mapped with the metric's map (identity for the raw domain)."""
        if self.maps is None:
            return values
        for name in (info.get("name", ""), info.get("label", "")):
            if metric_key(str(name)) in self.maps:
                return np.asarray(self.maps[metric_key(str(name))](values), dtype=float)
        raise ConfigError(
            f"{self.domain_maps}: no {self.domain} map for metric {info.get('name')!r}; "
            f"it has maps for {sorted(self.maps)}"
        )

    def summarise(self, group: pd.DataFrame, info: dict) -> dict[str, float]:
        pairs = group[["f_clean", "f_def_adv"]].to_numpy(dtype=float)
        pairs = pairs[np.isfinite(pairs).all(axis=1)]
        if len(pairs) == 0:
            return {}
        source, proc = self.to_domain(pairs[:, 0], info), self.to_domain(pairs[:, 1], info)
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
        if self.maps is not None:
            out = {f"{name}_{self.domain}": value for name, value in out.items()}
        return out


@hookimpl
def iqadef_register_scores(register):
    register(MsuRobustness)
