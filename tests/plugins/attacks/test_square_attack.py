"""Square attack (L-inf, black-box): the reference's loop, the bound, the score rise, and no gradient ever."""

from __future__ import annotations

import math

import pytest
import torch

from iqadef import ConfigError, GradientRequested, Metric, QueryMetric
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.attacks.square_attack import SquareAttack, image_generator


def reference_p_selection(p_init, it, n_iters):
    """ADI ``square-attack/run.py`` ``p_selection``, as written there."""
    it = int(it / n_iters * 10000)
    if 10 < it <= 50:
        p = p_init / 2
    elif 50 < it <= 200:
        p = p_init / 4
    elif 200 < it <= 500:
        p = p_init / 8
    elif 500 < it <= 1000:
        p = p_init / 16
    elif 1000 < it <= 2000:
        p = p_init / 32
    elif 2000 < it <= 4000:
        p = p_init / 64
    elif 4000 < it <= 6000:
        p = p_init / 128
    elif 6000 < it <= 8000:
        p = p_init / 256
    elif 8000 < it <= 10000:
        p = p_init / 512
    else:
        p = p_init
    return p


def reference_square(model, image, eps, n_iters, p_init, g):
    """The reference runner's ``attack`` for one image (batch of one), its random draws taken from ``g`` in its
    order (``np.random.randint`` x2, then ``np.random.choice`` until the square changes)."""
    _, c, h, w = image.shape
    n_features = c * h * w
    sign = 1 if model.higher_is_better else -1
    with torch.no_grad():
        loss = sign * model.score(image)
        x_best = image.clone()
        for i_iter in range(n_iters - 1):
            x_curr, x_best_curr = image.clone(), x_best.clone()
            deltas = x_best_curr - x_curr
            p = reference_p_selection(p_init, i_iter, n_iters)
            s = int(round(math.sqrt(p * n_features / c)))
            s = min(max(s, 1), h - 1)
            center_h = int(torch.randint(0, h - s, (1,), generator=g))
            center_w = int(torch.randint(0, w - s, (1,), generator=g))
            x_curr_window = x_curr[:, :, center_h : center_h + s, center_w : center_w + s]
            x_best_curr_window = x_best_curr[:, :, center_h : center_h + s, center_w : center_w + s]
            while (
                torch.sum(
                    torch.abs(
                        torch.clip(x_curr_window + deltas[:, :, center_h : center_h + s, center_w : center_w + s], 0, 1)
                        - x_best_curr_window
                    )
                    < 10**-7
                )
                == c * s * s
            ):
                choice = (torch.randint(0, 2, (c, 1, 1), generator=g) * 2 - 1).float() * eps
                deltas[..., center_h : center_h + s, center_w : center_w + s] = choice
            x_new = torch.clip(x_curr + deltas, 0, 1)
            loss_new = sign * model.score(x_new)
            if loss < loss_new:
                loss = loss_new
                x_best = x_new
    return x_best


@pytest.mark.parametrize("which", ["cnn", "lower"])
def test_square_attack_matches_the_reference_loop(which, cnn_metric, lower_metric, small_images):
    metric = cnn_metric if which == "cnn" else lower_metric
    images = small_images[:3]
    attack = SquareAttack(eps=0.05, queries=300)
    out = attack.run(metric, images, seed=11)
    for i in range(images.shape[0]):
        ref = reference_square(metric, images[i : i + 1], 0.05, 300, 0.05, image_generator(11, i))
        assert (out[i : i + 1] - ref).abs().max().item() <= 1e-6
    assert not torch.equal(out, images)


def test_p_schedule_matches_the_reference():
    from iqadef.plugins.attacks.square_attack import p_selection

    for n in (7, 300, 10000):
        assert [p_selection(0.05, i, n) for i in range(n)] == [reference_p_selection(0.05, i, n) for i in range(n)]


def test_defaults_are_the_reference_runners():
    attack = InstalledPlugins().get("attacks", "square-attack")()
    assert (attack.eps, attack.queries, attack.p_init, attack.init) == (0.1, 10000, 0.05, "clean")
    assert attack.black_box and attack.norm == "linf" and attack.bound() == 0.1
    assert SquareAttack(n_iters=50).queries == 50
    with pytest.raises(ConfigError, match="n_iters"):
        SquareAttack(n_iters=50, queries=60)


def test_square_attack_raises_tiny_iqa_within_eps_by_queries_only(tiny_iqa, bundled_images):
    eps, queries = 8 / 255, 200
    oracle = QueryMetric(tiny_iqa, bundled_images.shape[0])
    for init in ("clean", "stripes"):
        oracle.queries.zero_()
        out = SquareAttack(eps=eps, queries=queries, init=init).run(oracle, bundled_images, seed=3)
        assert (out - bundled_images).abs().max().item() <= eps + 1e-6 and out.min() >= 0 and out.max() <= 1
        assert oracle.queries.tolist() == [queries] * bundled_images.shape[0]  # exactly the budget, batched
        with torch.no_grad():
            before, after = tiny_iqa.score(bundled_images), tiny_iqa.score(out)
        assert (after > before).all(), (init, before, after)


class NoGradientAllowed(Metric):
    """Fails the test if it is ever asked for a gradient, or called with autograd on."""

    name = "test-no-gradient"

    def __init__(self, inner):
        super().__init__()
        self.inner, self.range, self.higher_is_better = inner, inner.range, inner.higher_is_better
        self.calls = 0

    def score(self, images):
        assert not torch.is_grad_enabled() and not images.requires_grad
        self.calls += 1
        return self.inner.score(images)


def test_square_attack_makes_no_gradient_call(cnn_metric, small_images):
    watched = NoGradientAllowed(cnn_metric)
    SquareAttack(eps=0.03, queries=40).run(QueryMetric(watched, 4), small_images, seed=0)
    assert watched.calls == 40  # one batched call per query step
    # and the oracle refuses a gradient, so an attack asking for one would fail its cells
    with pytest.raises(GradientRequested):
        QueryMetric(watched, 4).score(small_images.clone().requires_grad_(True))


class QuantisedEdges(Metric):
    """A metric with no gradient at all: the share of neighbouring pixels whose 8-level quantisation differs,
    computed under no_grad with rounding (gradient attacks get nothing from it)."""

    name = "test-quantised-edges"

    def score(self, images):
        with torch.no_grad():
            q = torch.round(images * 7)
            return (q[..., :, 1:] != q[..., :, :-1]).float().mean(dim=(1, 2, 3))


def test_square_attack_raises_a_metric_without_gradient(small_images):
    metric = QuantisedEdges()
    x = small_images.clone().requires_grad_(True)
    with pytest.raises(RuntimeError):  # what a gradient attack meets on this metric
        torch.autograd.grad(metric.score(x).sum(), x)
    out = SquareAttack(eps=0.05, queries=150).run(QueryMetric(metric, 4), small_images, seed=1)
    assert (out - small_images).abs().max().item() <= 0.05 + 1e-6
    before, after = metric.score(small_images), metric.score(out)
    assert (after > before).all() and (after - before).mean() > 0.02


def test_each_image_is_attacked_on_its_own(cnn_metric, small_images):
    """An image's result does not depend on the other images of its batch (per-image random streams)."""
    attack = SquareAttack(eps=0.05, queries=60)
    batch = attack.run(cnn_metric, small_images, seed=4)
    alone = attack.run(cnn_metric, small_images[:1], seed=4)
    assert torch.allclose(batch[:1], alone, atol=1e-6)
