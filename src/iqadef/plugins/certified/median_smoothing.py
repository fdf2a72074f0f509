"""``median-smoothing``: the median of the metric over Gaussian-noised copies, with the certified interval of
Chiang et al. (NeurIPS 2020), as Shumitskaya et al. apply it to NR-IQA metrics (arXiv 2411.12575)."""

from __future__ import annotations

from iqadef import MetricSmoothing, hookimpl, median_certificate


class MedianSmoothing(MetricSmoothing):
    """Median of f over n noisy copies, certified for ||delta||_2 <= eps (Chiang et al. 2020).

    The interval comes from the order statistics at the percentiles Phi(-eps/sigma), Phi(eps/sigma) with a
    binomial confidence correction: it holds with probability >= 1 - alpha, for any metric."""

    name = "median-smoothing"
    version = "1"

    def aggregate(self, samples, metric):
        return median_certificate(samples, self.eps, self.sigma, self.alpha)


@hookimpl
def iqadef_register_certified(register):
    register(MedianSmoothing)
