"""The certificate maths (core/smoothing.py) against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from iqadef import Metric
from iqadef.core.smoothing import (
    hoeffding_radius,
    mean_certificate,
    median_certificate,
    order_statistic_ranks,
    percentile_shift,
)
from iqadef.plugins.certified.mean_smoothing import MeanSmoothing
from iqadef.plugins.certified.median_smoothing import MedianSmoothing


class LinearMetric(Metric):
    """f(x) = w . x + c: f(x + N(0, s^2 I)) ~ N(f(x), s^2 ||w||^2), so every percentile is known."""

    name = "linear"
    range = (-10.0, 10.0)

    def __init__(self, w: torch.Tensor, c: float = 0.0):
        super().__init__()
        self.w, self.c = w, c

    def score(self, images):
        return (images * self.w).flatten(1).sum(1) + self.c


def test_ranks_match_the_textbook_median_interval():
    # eps = 0: the distribution-free 95% interval of the median of 100 values is X_(40) .. X_(61)
    assert order_statistic_ranks(100, 0.5, 0.5, 0.05) == (40, 61)


def test_ranks_need_enough_samples():
    # n = 5, eps/sigma = 1: P(all 5 below the 15.9th percentile) = 0.159^5 = 1e-4 > alpha/2 = 5e-5 -> no bound
    p_l, p_u = percentile_shift(1.0, 1.0)
    assert order_statistic_ranks(5, p_l, p_u, 1e-4) == (None, None)
    value, lower, upper = median_certificate(torch.randn(2, 5), 1.0, 1.0, 1e-4)
    assert torch.isinf(lower).all() and (lower < 0).all() and torch.isinf(upper).all() and (upper > 0).all()


def test_percentile_shift_is_phi_of_eps_over_sigma():
    p_l, p_u = percentile_shift(0.5, 0.25)
    assert p_l == pytest.approx(stats.norm.cdf(-2.0)) and p_u == pytest.approx(stats.norm.cdf(2.0))


def test_median_smoothing_of_a_linear_metric_closed_form():
    """Median w.x + c; the certified interval tends to [f(x) - eps ||w||, f(x) + eps ||w||] (the exact range
    of f over the ball) and contains the true percentiles' bounds at the stated confidence."""
    torch.manual_seed(0)
    shape = (3, 4, 4)
    w = torch.randn(shape)
    x = torch.full((1, *shape), 0.5)  # sigma 0.01: 50 sigma from the clipping at 0 and 1
    metric = LinearMetric(w, c=1.0)
    sigma, eps, n = 0.01, 0.01, 4000
    smoothing = MedianSmoothing(sigma=sigma, eps=eps, n=n, alpha=0.001, batch=512)
    out = smoothing.smooth(metric, x, seed=3)
    fx = float(metric.score(x))
    norm_w = float(w.norm())
    true_low, true_high = fx - eps * norm_w, fx + eps * norm_w  # Phi^-1(Phi(-eps/sigma)) * sigma ||w||
    assert float(out.value) == pytest.approx(fx, abs=0.05 * sigma * norm_w)
    assert float(out.lower) <= true_low and float(out.upper) >= true_high  # conservative, prob >= 1 - alpha
    # and not by much: the order statistics' spread at n = 4000 is a few percent of sigma ||w||
    assert float(out.lower) > true_low - 0.15 * sigma * norm_w
    assert float(out.upper) < true_high + 0.15 * sigma * norm_w


def test_mean_smoothing_of_a_linear_metric_closed_form():
    """No clipping within [-10, 10]: g(x) = f(x); the bound is low + span Phi(Phi^-1((g -+ t - low)/span) -+
    eps/sigma)."""
    torch.manual_seed(1)
    shape = (3, 4, 4)
    w = torch.randn(shape) * 0.1
    x = torch.full((1, *shape), 0.5)
    metric = LinearMetric(w, c=2.0)
    sigma, eps, n, alpha = 0.01, 0.005, 4000, 0.001
    out = MeanSmoothing(sigma=sigma, eps=eps, n=n, alpha=alpha, batch=512).smooth(metric, x, seed=5)
    fx = float(metric.score(x))
    assert float(out.value) == pytest.approx(fx, abs=4 * sigma * float(w.norm()) / math.sqrt(n))
    low, span = -10.0, 20.0
    t = hoeffding_radius(n, span, alpha)
    g = float(out.value)
    expected_low = low + span * stats.norm.cdf(stats.norm.ppf((g - t - low) / span) - eps / sigma)
    expected_high = low + span * stats.norm.cdf(stats.norm.ppf((g + t - low) / span) + eps / sigma)
    assert float(out.lower) == pytest.approx(expected_low, rel=1e-5)
    assert float(out.upper) == pytest.approx(expected_high, rel=1e-5)
    # the true smoothed value over the ball, f(x) -+ eps ||w||, is inside
    assert float(out.lower) <= fx - eps * float(w.norm()) and float(out.upper) >= fx + eps * float(w.norm())


def test_mean_certificate_clips_and_saturates():
    samples = torch.tensor([[20.0] * 10, [-20.0] * 10])  # outside [0, 1]: clipped
    value, lower, upper = mean_certificate(samples, eps=0.1, sigma=0.1, alpha=0.01, low=0.0, high=1.0)
    assert value.tolist() == [1.0, 0.0]
    assert float(upper[0]) == 1.0 and float(lower[1]) == 0.0
    assert (lower <= value).all() and (value <= upper).all()


def test_values_do_not_depend_on_the_noise_batch():
    metric = LinearMetric(torch.randn(3, 4, 4))
    x = torch.rand(3, 3, 4, 4)
    a = MedianSmoothing(n=37, batch=5).smooth(metric, x, seed=11)
    b = MedianSmoothing(n=37, batch=200).smooth(metric, x, seed=11)
    for u, v in ((a.value, b.value), (a.lower, b.lower), (a.upper, b.upper)):
        torch.testing.assert_close(u, v)
    d = MedianSmoothing(n=37, batch=5).smooth(metric, x, seed=12)
    assert not torch.equal(a.value, d.value)
