"""fs-iqa (feature-space smoothing): the Lipschitz bounds are upper bounds, the certificate is the closed form
on a linear toy, and on tiny-iqa the smoothed score stays in its certificate under random and adversarial
perturbations within the radius."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from iqadef import ConfigError, Metric
from iqadef.core.lipschitz import conv2d_norm_bound, jacobian_norm, resize_matrix, resize_norm
from iqadef.core.smoothing import FeatureSplit, median_certificate
from iqadef.plugins.certified.fs_iqa import FeatureSmoothing
from iqadef.plugins.metrics.embedded import TinyIQA, TinyIQANet, mscn, mscn_lipschitz


class LinearSplit(Metric):
    """f(x) = w . (A x) + b with A = c * (orthonormal rows): ||A||_2 = c exactly, and the range of f over the
    ball of radius eps is f(x) -+ c ||w|| eps when w lies in A's row space (it does: A has full row rank)."""

    name = "linear-split"
    range = (-10.0, 10.0)

    def __init__(self, dim: int, features: int, c: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, features, generator=g, dtype=torch.float64))
        self.a = (c * q.T).float()  # [features, dim], orthonormal rows times c
        self.w = torch.randn(features, generator=g)
        self.c, self.b = c, 1.5

    def head(self, z):
        return z @ self.w + self.b

    def backbone(self, images):
        return images.flatten(1) @ self.a.T

    def score(self, images):
        return self.head(self.backbone(images))

    def feature_split(self, size):
        return FeatureSplit(self.backbone, self.head, self.c, "exact")


class Plain(Metric):
    name = "plain"

    def score(self, images):
        return images.flatten(1).mean(1)


def test_closed_form_interval_on_a_linear_split():
    """head(z + N(0, s^2 I)) ~ N(f(x), s^2 ||w||^2): the certified interval tends to f(x) -+ c ||w|| eps, the
    exact range of f over the eps-ball, and equals the median certificate at feature radius c * eps."""
    metric = LinearSplit(dim=3 * 4 * 4, features=6, c=2.5)
    smoothing = FeatureSmoothing(sigma=0.5, n=4000, eps=0.1, alpha=0.001, batch=4096)
    x = torch.rand(2, 3, 4, 4)
    out = smoothing.smooth(metric, x, seed=3)
    f = metric.score(x)
    half = metric.c * float(metric.w.norm()) * 0.1
    # the order statistics at Phi(-+ c eps / s) with n = 4000 sit within ~3 standard errors of the percentiles
    spread = 0.5 * float(metric.w.norm())
    se = spread * math.sqrt(0.25 * 0.75 / 4000) / stats.norm.pdf(stats.norm.ppf(0.25)) * 4
    assert torch.allclose(out.lower, f - half, atol=se) and torch.allclose(out.upper, f + half, atol=se)
    assert torch.allclose(out.value, f, atol=se)
    # the same samples through the shared certificate at the feature radius L * eps
    smoothing._head = metric.head
    samples = smoothing.noisy_scores(metric, metric.backbone(x), seed=3)
    value, lower, upper = median_certificate(samples, metric.c * 0.1, 0.5, 0.001)
    assert torch.equal(value, out.value) and torch.equal(lower, out.lower) and torch.equal(upper, out.upper)
    # the edges are attained: the worst input within eps moves f by exactly c ||w|| eps
    direction = (metric.w @ metric.a).view(1, 3, 4, 4)
    step = 0.1 * direction / direction.norm()
    assert float(metric.score(x[:1] + step) - f[:1]) == pytest.approx(half, rel=1e-4)


def test_jacobian_option_is_the_local_norm_and_equals_the_bound_on_a_linear_split():
    """``bound: jacobian`` (the paper's largest singular value of the Jacobian at x): for a linear backbone it
    is ||A|| = c everywhere, so the interval is the provable one."""
    metric = LinearSplit(dim=3 * 4 * 4, features=6, c=2.5)
    x = torch.rand(2, 3, 4, 4)
    provable = FeatureSmoothing(sigma=0.5, n=500, eps=0.1, batch=1000).smooth(metric, x, seed=1)
    local = FeatureSmoothing(sigma=0.5, n=500, eps=0.1, batch=1000, bound="jacobian", jacobian_iters=50).smooth(
        metric, x, seed=1
    )
    split = metric.feature_split((4, 4))
    radii = FeatureSmoothing(eps=0.1, bound="jacobian", jacobian_iters=50).jacobian_radii(split, x)
    assert radii == pytest.approx([0.25, 0.25], rel=1e-3)
    assert torch.equal(provable.value, local.value)
    assert torch.allclose(provable.lower, local.lower) and torch.allclose(provable.upper, local.upper)


def test_a_metric_without_a_feature_split_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        FeatureSmoothing().check_metric(Plain(), "registry.yaml: certified[0]")
    message = str(err.value)
    assert "\n" not in message and "certified[0]" in message and "feature_split" in message
    FeatureSmoothing().check_metric(LinearSplit(12, 3, 1.0), "x")  # accepted


def test_conv_bound_is_the_circular_norm_and_bounds_the_zero_padded_one():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    bound = conv2d_norm_bound(w, (10, 10), 1)
    # the exact norm of the circular convolution on the 12 x 12 torus (power iteration to convergence)
    circ = lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)  # noqa: E731
    x = torch.zeros(1, 4, 12, 12, dtype=torch.float64)
    assert jacobian_norm(circ, x, iters=400) == pytest.approx(bound, rel=1e-3)
    for stride in (1, 2):
        zero = lambda x: F.conv2d(x, w, padding=1, stride=stride)  # noqa: E731
        assert jacobian_norm(zero, torch.zeros(1, 4, 10, 10, dtype=torch.float64), iters=200) <= bound * (1 + 1e-9)


def test_resize_norm_is_exact():
    r = resize_matrix(37, 16)
    x = torch.rand(1, 1, 37, 23, dtype=torch.float64)
    y = F.interpolate(x, size=(16, 23), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(y[0, 0], r @ x[0, 0])

    def resize(x):
        return F.interpolate(x, size=(16, 9), mode="bilinear", align_corners=False, antialias=True)

    estimate = jacobian_norm(resize, torch.zeros(1, 1, 37, 23, dtype=torch.float64), iters=300)
    assert estimate <= resize_norm((37, 23), (16, 9)) == pytest.approx(estimate, rel=5e-3)


def test_mscn_bound_is_above_its_steepest_secants():
    """Flat images are where MSCN is steepest (the contrast normaliser is ~c there)."""
    bound = mscn_lipschitz(24, 24)
    for luma in (torch.full((1, 1, 24, 24), 0.5, dtype=torch.float64), torch.rand(1, 1, 24, 24, dtype=torch.float64)):
        found = jacobian_norm(lambda y: mscn(y).flatten(1), luma, iters=40, step=1e-5)
        assert 0 < found <= bound
    assert found < bound  # a random image is far from the worst case


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_iqa_feature_bound_is_an_upper_bound(seed):
    """Random weights and BatchNorm statistics, narrow widths (fast): the bound is above the largest secant
    ratio found at sample images, locally (power iteration) and at larger steps (PGD-L2 on the feature
    distance)."""
    torch.manual_seed(seed)
    net = TinyIQANet(widths=(4, 6, 6, 8, 8))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    net.eval()
    bound = net.features_lipschitz((224, 224))
    x = torch.rand(1, 3, 224, 224)
    local = jacobian_norm(net.features, x, iters=8)
    assert 0 < local <= bound
    for radius in (1e-2, 1.0):
        delta = torch.randn_like(x)
        delta = radius * delta / delta.norm()
        for _ in range(5):  # PGD-L2 on ||phi(x + d) - phi(x)||
            delta.requires_grad_(True)
            gap = (net.features(x + delta) - net.features(x)).norm()
            (grad,) = torch.autograd.grad(gap, delta)
            delta = delta.detach() + radius * grad / grad.norm()
            delta = radius * delta / delta.norm()
        with torch.no_grad():
            ratio = float((net.features(x + delta) - net.features(x)).norm()) / radius
        assert ratio <= bound


@pytest.fixture(scope="module")
def tiny():
    metric = TinyIQA()
    metric.setup(torch.device("cpu"))
    metric.net.eval()
    return metric


@pytest.mark.slow
def test_tiny_iqa_split_reproduces_the_score_and_bounds_its_backbone(tiny):
    x = torch.rand(2, 3, 224, 224)
    split = tiny.feature_split((224, 224))
    assert torch.allclose(split.head(split.backbone(x)), tiny.score(x), atol=1e-4)
    assert jacobian_norm(split.backbone, x[:1], iters=5) <= split.lipschitz
    assert tiny.feature_split((224, 224)).lipschitz == split.lipschitz  # cached per size


@pytest.mark.slow
def test_monte_carlo_smoothed_score_stays_in_its_certificate_on_tiny_iqa(tiny):
    """The certificate at x: [l, u] holds the smoothed median of every image within eps, so of every feature
    point within L * eps of the backbone's output (all an input perturbation can reach). Over random and
    PGD-L2 feature perturbations of that norm (PGD on the smoothed head's mean, towards each edge), the
    smoothed median, estimated with many fresh draws, leaves [l, u] no more often than alpha allows."""
    x = torch.rand(3, 3, 224, 224)
    split = tiny.feature_split((224, 224))
    alpha = 0.01
    smoothing = FeatureSmoothing(sigma=0.25, n=200, alpha=alpha, batch=1024)
    smoothing.eps = 0.5 * 0.25 / split.lipschitz  # feature radius sigma / 2
    radius = smoothing.feature_radius(split)
    out = smoothing.smooth(tiny, x, seed=11)
    assert torch.isfinite(out.lower).all() and torch.isfinite(out.upper).all()
    z = split.backbone(x).detach()
    g = torch.Generator().manual_seed(5)
    estimate = FeatureSmoothing(sigma=0.25, n=4000, batch=4000)
    misses, trials = 0, 0
    for i in range(x.shape[0]):
        moves = [torch.randn(z.shape[1], generator=g) for _ in range(6)]
        for sign in (1.0, -1.0):  # PGD-L2 on the mean of the head under feature noise, up and down
            d = torch.zeros(1, z.shape[1])
            for _ in range(10):
                d.requires_grad_(True)
                noise = 0.25 * torch.randn(64, z.shape[1], generator=g)
                mean = split.head(z[i : i + 1] + d + noise).mean()
                (grad,) = torch.autograd.grad(sign * mean, d)
                d = d.detach() + 0.3 * radius * grad / (grad.norm() + 1e-12)
                d = d * min(1.0, radius / float(d.norm()))
            moves.append(d[0])
        for move in moves:
            moved = (z[i] + radius * move / move.norm()).unsqueeze(0)
            estimate._head = split.head
            median = float(estimate.noisy_scores(tiny, moved, seed=100 + trials).median())
            trials += 1
            misses += not (float(out.lower[i]) <= median <= float(out.upper[i]))
    # P(misses >= k) under Binomial(trials, alpha) must not be tiny: with these numbers, k <= 1
    assert misses <= stats.binom.ppf(0.999, trials, alpha), (misses, trials)
