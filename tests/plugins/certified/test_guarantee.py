"""The certificate holds where it should: f_s(x + delta) stays inside the certified interval of x for
||delta||_2 <= eps (random directions and PGD-L2 attacks), and the interval is far narrower than the metric's
range. Seeds are fixed; with alpha = 1e-3 and eps/sigma = 1 a violation would need the estimated median at
x + delta to fall outside its own 16th..84th percentiles, which at n >= 64 has odds below 1e-5 per check."""

from __future__ import annotations

import pytest
import torch
from toy_plugins import ToyMetric

from iqadef.plugins.attacks.pgd_l2 import PGDL2
from iqadef.plugins.certified.mean_smoothing import MeanSmoothing
from iqadef.plugins.certified.median_smoothing import MedianSmoothing


def images(n: int = 2, size: int = 24) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.stack(
        [
            torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)]) * 0.4 + 0.5
            for i in range(n)
        ]
    )


def perturbations(x: torch.Tensor, eps: float, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random perturbations of L2 norm exactly ``eps`` per image (kept in [0, 1] by shrinking)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        d = torch.randn(x.shape, generator=g)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
        out.append((x + d).clamp(0, 1))
    return out


def inside(value, lower, upper) -> bool:
    return bool(((value >= lower) & (value <= upper)).all())


@pytest.mark.parametrize(
    "smoothing",
    [
        MedianSmoothing(n=128, sigma=0.1, eps=0.1, alpha=1e-3, batch=128),
        MeanSmoothing(n=128, sigma=0.1, eps=0.1, alpha=1e-3, batch=128, low=0.0, high=4.0),
    ],
    ids=["median", "mean"],
)
def test_guarantee_on_a_nonlinear_metric(smoothing):
    metric = ToyMetric()
    x = images(3)
    cert = smoothing.smooth(metric, x, seed=0)
    moved = perturbations(x, smoothing.eps, 6, seed=1)
    moved.append(PGDL2(eps=smoothing.eps, steps=10).run(metric, x, seed=0))  # pushes f up within the ball
    for k, x2 in enumerate(moved):
        assert float((x2 - x).flatten(1).norm(dim=1).max()) <= smoothing.eps + 1e-5
        other = smoothing.smooth(metric, x2, seed=100 + k)  # fresh noise: another estimate
        assert inside(other.value, cert.lower, cert.upper), (k, other.value, cert.lower, cert.upper)
    # a perturbation far outside the ball is not covered: the interval means something
    far = torch.rand(x.shape, generator=torch.Generator().manual_seed(9))  # noise: far from x
    assert not inside(smoothing.smooth(metric, far, seed=7).value, cert.lower, cert.upper)


@pytest.mark.slow
def test_guarantee_and_width_on_the_embedded_metric():
    """tiny-iqa (range -6..86): random directions and PGD-L2 of norm eps stay inside; width < 5% of the range."""
    from iqadef.plugins.metrics.embedded import TinyIQA

    metric = TinyIQA().load("cpu")
    x = images(2)
    smoothing = MedianSmoothing(n=64, sigma=0.1, eps=0.1, alpha=1e-3, batch=64)
    cert = smoothing.smooth(metric, x, seed=0)
    width = cert.upper - cert.lower
    assert bool((width < 0.05 * metric.span).all()), width
    attacked = PGDL2(eps=0.1, steps=5).run(metric, x, seed=0)
    assert bool((metric.score(attacked) > metric.score(x)).all())  # the attack moved the plain metric
    for k, x2 in enumerate([*perturbations(x, 0.1, 1, seed=2), attacked]):
        other = smoothing.smooth(metric, x2, seed=50 + k)
        assert inside(other.value, cert.lower, cert.upper), (k, other.value, cert.lower, cert.upper)
