"""``mean-smoothing``: randomized smoothing of a bounded regressor (the mean of the clipped metric over
Gaussian-noised copies), certified with the expectation bound of Salman et al. (NeurIPS 2019, Lemma 2; the
"expectation-based" certificate of Kumar et al., NeurIPS 2020) and a Hoeffding confidence interval."""

from __future__ import annotations

from iqadef import ConfigError, MetricSmoothing, Param, hookimpl, mean_certificate, smoothing_params


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
    low: float | None
    high: float | None

    def __init__(self, where: str | None = None, **values):
        super().__init__(where, **values)
        if self.low is not None and self.high is not None and not self.high > self.low:
            raise ConfigError(
                f"{where or self.name}.low: {self.low!r} must be below high ({self.high!r}); "
                f"swap them, or leave both out for the metric's range"
            )

    def check_metric(self, metric, where: str) -> None:
        """A bound given on one side only must still leave an interval with the metric's range."""
        self.bounds(metric, where)

    def bounds(self, metric, where: str = "mean-smoothing") -> tuple[float, float]:
        low = metric.range[0] if self.low is None else self.low
        high = metric.range[1] if self.high is None else self.high
        if not high > low:
            key = "low" if self.low is not None else "high"
            raise ConfigError(
                f"{where}.{key}: low {low!r} must be below high {high!r} (with metric "
                f"{metric.label!r}, whose range is {list(metric.range)}); give both `low` and `high`"
            )
        return float(low), float(high)

    def aggregate(self, samples, metric):
        return mean_certificate(samples, self.eps, self.sigma, self.alpha, *self.bounds(metric))


@hookimpl
def iqadef_register_certified(register):
    register(MeanSmoothing)
