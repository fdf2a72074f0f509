"""Radius certificates of binned smoothing (``rs``, ``drs``, ``ddrs``): the maths against hand-computed and
reference-style code (``katiashh/certified-iqa-defenses`` ``ccrf/calc_rs_*.py``, ``ccrf/core.py``), the closed
form on a linear metric, and the guarantee under random and PGD-L2 perturbations within the radius."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from toy_plugins import ToyMetric

from iqadef import Metric
from iqadef.core.smoothing import bin_edges, clopper_pearson_lower, rs_certificate, score_bins
from iqadef.plugins.attacks.pgd_l2 import PGDL2
from iqadef.plugins.certified.rs import RandomizedSmoothing


class LinearMetric(Metric):
    """f(x) = w . x + c: f(x + N(0, s^2 I)) ~ N(f(x), s^2 ||w||^2), so each bin's probability is known."""

    name = "linear"
    range = (0.0, 10.0)

    def __init__(self, w: torch.Tensor, c: float = 0.0):
        super().__init__()
        self.w, self.c = w, c

    def score(self, images):
        return (images * self.w).flatten(1).sum(1) + self.c


def reference_bins(scores, low, high, n_bins=10):
    """The reference's MetricClassifier.forward, loop for loop over a tensor (ccrf/calc_rs_linearity.py)."""
    d = (high - low) / n_bins
    out = []
    for s in scores:
        b, cur = low, -1
        if s <= b:
            cur = 0
        for i in range(n_bins):
            if b < s <= b + d:
                cur = i + 1
            b += d
        if cur == -1:
            cur = n_bins + 1
        out.append(cur)
    return out


def reference_certify(selection, estimation, sigma, alpha):
    """ccrf's certify_clf on given class samples: np.unique + argmax selects, Clopper-Pearson via
    binomtest (== statsmodels' proportion_confint(alpha=2 alpha, method='beta')[0]), abstain below 0.5."""
    unique, counts = np.unique(selection, return_counts=True)
    chosen = int(unique[int(np.argmax(counts))])
    n_a = int((np.asarray(estimation) == chosen).sum())
    n = len(estimation)
    p = stats.binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low if n_a else 0.0
    return (-1, 0.0) if p < 0.5 else (chosen, sigma * stats.norm.ppf(p))


def test_bins_follow_the_reference_classifier():
    low, high = 25.780681610107422, 83.22696685791016  # Linearity's range, as in calc_rs_linearity.py
    g = torch.Generator().manual_seed(0)
    scores = torch.cat(
        [
            torch.rand(500, generator=g) * 80 + 15,
            torch.tensor([low, high, low + (high - low) / 10, 20.0, 90.0, float("nan")]),
        ]
    )
    got = score_bins(scores, low, high, 10).tolist()
    assert got == reference_bins(scores, low, high)


def test_bin_edges_contain_their_scores():
    scores = torch.linspace(-1, 11, 97)
    label = score_bins(scores, 0.0, 10.0, 10)
    lower, middle, upper = bin_edges(label, 0.0, 10.0, 10)
    assert bool(((scores > lower) | (lower == -math.inf)).all() and (scores <= upper).all())
    assert bool(((lower <= middle) & (middle <= upper)).all())


@pytest.mark.parametrize("n_a,n", [(0, 10), (3, 10), (9, 10), (10, 10), (700, 1000), (999, 1000)])
def test_clopper_pearson_matches_the_reference(n_a, n):
    want = stats.binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * 0.001, method="exact").low if n_a else 0.0
    assert clopper_pearson_lower(n_a, n, 0.001) == pytest.approx(want, abs=1e-12)


def test_certify_matches_the_reference_loop():
    g = np.random.default_rng(4)
    cases = [
        g.choice(12, size=1100, p=p)
        for p in (
            np.eye(12)[5] * 0.97 + 0.03 / 12,
            np.full(12, 1 / 12),
            np.eye(12)[0] * 0.6 + 0.4 / 12,
            np.eye(12)[11] * 0.5 + 0.5 / 12,
        )
    ]
    sel = torch.tensor(np.stack([c[:100] for c in cases]))
    est = torch.tensor(np.stack([c[100:] for c in cases]))
    label, radius, chosen = rs_certificate(sel, est, 0.12, 0.001, 12)
    for i, c in enumerate(cases):
        want_label, want_radius = reference_certify(c[:100], c[100:], 0.12, 0.001)
        assert int(label[i]) == want_label
        assert float(radius[i]) == pytest.approx(want_radius, abs=1e-12)
    assert int(label[1]) == -1 and float(radius[1]) == 0.0  # uniform: abstains
    assert int(chosen[1]) >= 0  # the selected class is still reported


def test_rs_of_a_linear_metric_closed_form():
    """f(x + noise) ~ N(f(x), (sigma ||w||)^2): pA = P(bin of f(x)) is known; the certified radius approaches
    sigma Phi^-1(pA) from below as n grows, and never exceeds it (w.p. >= 1 - alpha)."""
    torch.manual_seed(0)
    shape = (3, 4, 4)
    w = torch.randn(shape)
    w = 7.0 * w / w.norm()  # sigma ||w|| = 0.35: pA = P(|N(0, 0.35^2)| <= 0.5) ~ 0.85, not ~1
    x = torch.full((1, *shape), 0.5)  # sigma 0.05: 10 sigma from the clipping at 0 and 1
    c = 5.5 - float((x * w).sum())  # f(x) = 5.5: the middle of bin 6 = (5, 6]
    metric = LinearMetric(w, c)
    sigma, n = 0.05, 20000
    rs = RandomizedSmoothing(sigma=sigma, n=n, n0=100, alpha=0.001, bins=10, eps=0.01, batch=4096)
    out = rs.smooth(metric, x, seed=1)
    s = sigma * float(w.norm())
    p_true = stats.norm.cdf(0.5 / s) - stats.norm.cdf(-0.5 / s)
    r_true = sigma * stats.norm.ppf(p_true)
    assert int(out.bin) == 6 and float(out.value) == pytest.approx(5.5)
    assert float(out.radius) <= r_true + 1e-9
    assert 0.03 < r_true < 0.07 and float(out.radius) > r_true - 0.005  # n = 20000: the bound is close
    # the radius covers eps: the interval is the bin's edges
    assert float(out.lower) == pytest.approx(5.0) and float(out.upper) == pytest.approx(6.0)


def test_rs_abstains_on_a_bin_edge():
    """f(x) exactly on an edge: the mass splits half-half between two bins, pA < 0.5: abstain, radius 0,
    no interval (-inf, inf)."""
    shape = (3, 4, 4)
    w = torch.ones(shape) / math.sqrt(48)
    x = torch.full((1, *shape), 0.5)
    metric = LinearMetric(w, 5.0 - float((x * w).sum()))
    out = RandomizedSmoothing(sigma=0.05, n=2000, batch=1000).smooth(metric, x, seed=2)
    assert int(out.bin) == -1 and float(out.radius) == 0.0
    assert math.isinf(float(out.lower)) and math.isinf(float(out.upper))


def images(n: int = 2, size: int = 24) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.stack(
        [
            torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)]) * 0.4 + 0.5
            for i in range(n)
        ]
    )


def test_rs_guarantee_within_the_radius_on_a_nonlinear_metric():
    """Random directions and PGD-L2 at 0.9 x the certified radius: the smoothed bin (a fresh estimate) is
    the clean one or an abstention, never another bin. The metric's range is set so that the clean scores
    sit inside wide bins."""
    metric = ToyMetric()
    x = images(3)
    rs = RandomizedSmoothing(sigma=0.1, n=400, n0=50, alpha=1e-3, bins=2, batch=450)
    metric.range = (float(metric.score(x).min()) - 1.0, float(metric.score(x).max()) + 1.0)
    cert = rs.smooth(metric, x, seed=0)
    assert bool((cert.bin >= 0).all() and (cert.radius > 0).all()), (cert.bin, cert.radius)
    for i in range(x.shape[0]):
        r = 0.9 * float(cert.radius[i])
        xi = x[i : i + 1]
        g = torch.Generator().manual_seed(10 + i)
        moved = []
        for _ in range(4):
            d = torch.randn(xi.shape, generator=g)
            moved.append((xi + d / d.norm() * r).clamp(0, 1))
        moved.append(PGDL2(eps=r, steps=10).run(metric, xi, seed=0))
        for k, x2 in enumerate(moved):
            assert float((x2 - xi).norm()) <= r + 1e-5
            other = rs.smooth(metric, x2, seed=100 + k)
            assert int(other.bin) in (int(cert.bin[i]), -1), (i, k, other.bin, cert.bin[i])


def test_rs_values_do_not_depend_on_the_noise_batch():
    metric = ToyMetric()
    x = images(2, 12)
    metric.range = (0.0, 4.0)
    a = RandomizedSmoothing(n=60, n0=10, batch=7).smooth(metric, x, seed=5)
    b = RandomizedSmoothing(n=60, n0=10, batch=500).smooth(metric, x, seed=5)
    assert torch.equal(a.bin, b.bin) and torch.equal(a.radius, b.radius) and torch.equal(a.value, b.value)


@pytest.mark.slow
def test_rs_guarantee_on_the_embedded_metric():
    """tiny-iqa with its declared range in 10 bins: random directions and PGD-L2 at 0.9 x each image's
    certified radius keep the smoothed bin (or abstain)."""
    from iqadef.plugins.metrics.embedded import TinyIQA

    metric = TinyIQA().load("cpu")
    x = images(2, 32)
    rs = RandomizedSmoothing(sigma=0.05, n=200, n0=20, alpha=1e-3, batch=110)
    cert = rs.smooth(metric, x, seed=0)
    certified = [i for i in range(x.shape[0]) if int(cert.bin[i]) >= 0 and float(cert.radius[i]) > 0]
    assert certified, (cert.bin, cert.radius)
    for i in certified:
        r = 0.9 * float(cert.radius[i])
        xi = x[i : i + 1]
        g = torch.Generator().manual_seed(20 + i)
        moved = []
        for _ in range(2):
            d = torch.randn(xi.shape, generator=g)
            moved.append((xi + d / d.norm() * r).clamp(0, 1))
        attacked = PGDL2(eps=r, steps=5).run(metric, xi, seed=0)
        assert float(metric.score(attacked)) > float(metric.score(xi))  # the attack moves the plain metric
        moved.append(attacked)
        for k, x2 in enumerate(moved):
            other = rs.smooth(metric, x2, seed=200 + k)
            assert int(other.bin) in (int(cert.bin[i]), -1), (i, k, other.bin, cert.bin[i])
