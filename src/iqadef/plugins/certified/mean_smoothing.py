"""``mean-smoothing``: randomized smoothing of a bounded regressor (the mean of the clipped metric over
Gaussian-noised copies), certified with the expectation bound of Salman et al. (NeurIPS 2019, Lemma 2; the
"expectation-based" certificate of Kumar et al., NeurIPS 2020) and a Hoeffding confidence interval."""

from __future__ import annotations

from iqadef import ConfigError, MetricSmoothing, Param, hookimpl
from iqadef.core.smoothing import mean_certificate, smoothing_params


class MeanSmoothing(MetricSmoothing):
    """Mean of the clipped f over n noisy copies, certified for ||delta||_2 <= eps (Salman et al. 2019).

    Interval: [low + (high-low) Phi(Phi^-1(g-) - eps/sigma), low + (high-low) Phi(Phi^-1(g+) + eps/sigma)], g-+ the
    mean -+ the Hoeffding radius, scaled to [0, 1]; holds with probability >= 1 - alpha. The bounds
    [low, high] default to the metric's `range` (its scores are clipped to them)."""

    name = "mean-smoothing"
    version = "1"
    params = smoothing_params() + (
        Param("low", float, None, "lower bound of the clipped metric; null: the metric's range", nullable=True),
        Param("high", float, None, "upper bound of the clipped metric; null: the metric's range", nullable=True),
    )

    def bounds(self, metric) -> tuple[float, float]:
        low = metric.range[0] if self.low is None else self.low
        high = metric.range[1] if self.high is None else self.high
        if not high > low:
            raise ConfigError(f"mean-smoothing: low {low!r} must be below high {high!r} (params `low`, `high`)")
        return float(low), float(high)

    def aggregate(self, samples, metric):
        return mean_certificate(samples, self.eps, self.sigma, self.alpha, *self.bounds(metric))


@hookimpl
def iqadef_register_certified(register):
    register(MeanSmoothing)
