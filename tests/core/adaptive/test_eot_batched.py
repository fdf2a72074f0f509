"""EOT draws scored in one metric call: the same values and gradients as one call per draw, one forward and
one backward of the metric per step, and the draws' spread available."""

from __future__ import annotations

import pytest
import torch

from iqadef import Defence, Metric
from iqadef.core.adaptive import DefendedMetric


class CountingMetric(Metric):
    """Wraps a metric and records the batch size of every call."""

    name = "counting-metric"

    def __init__(self, inner):
        super().__init__()
        self.inner, self.range, self.higher_is_better = inner, inner.range, inner.higher_is_better
        self.batches = []

    def score(self, images):
        self.batches.append(images.shape[0])
        return self.inner.score(images)


class RandomSizeCrop(Defence):
    """Crops a random square whose side depends on the seed: draws of different sizes cannot be stacked."""

    name = "random-size-crop"
    randomized = True
    differentiable = True
    preserves_size = False

    def purify(self, images, *, seed=None):
        side = 24 + (seed or 0) % 3 * 4
        return images[..., :side, :side]


def _value_and_grad(target, images):
    x = images.clone().requires_grad_(True)
    value = target.score(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("defence_name", ["random-rotate", "jpeg", "random-noise"])
def test_stacked_draws_give_the_values_and_gradients_of_one_call_per_draw(
    defence_name, registry, tiny_metric, small_images
):
    defence = registry.get("defences", defence_name)().load("cpu")
    images = small_images[:2, :, :64, :64].contiguous()
    counting = CountingMetric(tiny_metric)
    stacked = DefendedMetric(counting, defence, samples=8, seed=3)
    single = DefendedMetric(tiny_metric, defence, samples=8, seed=3, stack=False)
    for _ in range(2):  # fresh draws at each step, the same ones in both
        v1, g1 = _value_and_grad(stacked, images)
        v2, g2 = _value_and_grad(single, images)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
        # batch size changes the CPU's convolution kernels: float noise, scaled to the gradient's size
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4 * float(g2.abs().max()))
    k = 8 if defence.randomized else 1
    assert counting.batches == [2 * k, 2 * k]  # one metric call per step, on B*K images
    if defence.randomized:
        assert stacked.last_draws.shape == (8, 2)
        assert torch.allclose(stacked.draw_variance, stacked.last_draws.var(dim=0))
        assert (stacked.draw_variance > 0).all()
    else:
        assert stacked.draw_variance is None


def test_draws_of_different_sizes_are_scored_per_size(tiny_metric, small_images):
    images = small_images[:2, :, :32, :32].contiguous()
    counting = CountingMetric(tiny_metric)
    stacked = DefendedMetric(counting, RandomSizeCrop(), samples=6, seed=1)
    single = DefendedMetric(tiny_metric, RandomSizeCrop(), samples=6, seed=1, stack=False)
    torch.testing.assert_close(stacked.score(images), single.score(images), rtol=1e-5, atol=1e-5)
    assert sum(counting.batches) == 12 and 1 < len(counting.batches) <= 3


class CountingSurrogate(Defence):
    """Non-differentiable (BPDA) with a surrogate that counts its calls."""

    name = "counting-surrogate"

    def __init__(self):
        super().__init__()
        self.surrogates = 0

    def purify(self, images, *, seed=None):
        return torch.round(images * 8) / 8

    def estimate_forward(self, images):
        self.surrogates += 1
        return images


def test_a_query_without_gradient_skips_the_bpda_surrogate(small_images):
    defence = CountingSurrogate()
    with torch.no_grad():
        assert torch.equal(defence.forward(small_images), defence.purify(small_images))
    assert defence.surrogates == 0  # a black-box query through a BPDA defence pays for the real defence only
    x = small_images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(defence.forward(x).sum(), x)
    assert defence.surrogates == 1 and torch.equal(grad, torch.ones_like(grad))
