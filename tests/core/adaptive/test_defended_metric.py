"""DefendedMetric: f(D(x)) with BPDA and EOT, attacker-chosen seeds, identity per (metric, defence)."""

from __future__ import annotations

import torch

from iqadef import Defence, Metric
from iqadef.core.adaptive import DefendedMetric, eot_seed


class MeanMetric(Metric):
    name = "mean-metric"
    range = (0.0, 1.0)

    def score(self, images):
        return images.mean(dim=(1, 2, 3))


class SeedRecorder(Defence):
    """Adds a seed-dependent constant and records the seeds it was called with."""

    name = "seed-recorder"
    randomized = True
    differentiable = True

    def __init__(self):
        super().__init__()
        self.seeds = []

    def purify(self, images, *, seed=None):
        self.seeds.append(seed)
        return images + (seed % 1000) * 1e-6


class Halve(Defence):
    name = "halve"

    def purify(self, images, *, seed=None):
        return torch.round(images * 4) / 8  # non-differentiable: BPDA with the identity backward


def test_eot_averages_over_fresh_attacker_seeds_that_replay():
    x = torch.full((2, 3, 4, 4), 0.5)
    first = SeedRecorder()
    target = DefendedMetric(MeanMetric(), first, samples=3, seed=7)
    a1, a2 = target.score(x), target.score(x)
    assert first.seeds == [eot_seed(7, k) for k in range(6)]  # new draws at every attack step
    expected = 0.5 + sum(s % 1000 for s in first.seeds[:3]) * 1e-6 / 3
    assert torch.allclose(a1, torch.full((2,), expected, dtype=torch.float64).float(), atol=1e-7)
    assert not torch.equal(a1, a2)
    replay = SeedRecorder()
    again = DefendedMetric(MeanMetric(), replay, samples=3, seed=7)
    assert torch.equal(again.score(x), a1) and replay.seeds == first.seeds[:3]
    other = SeedRecorder()
    DefendedMetric(MeanMetric(), other, samples=3, seed=8).score(x)
    assert not set(other.seeds) & set(first.seeds)


def test_deterministic_defence_is_called_once_and_bpda_passes_the_gradient():
    target = DefendedMetric(MeanMetric(), Halve(), samples=8, seed=1)
    assert target.samples == 1
    x = torch.rand(2, 3, 4, 4).requires_grad_(True)
    value = target.score(x)
    assert torch.allclose(value, (torch.round(x * 4) / 8).mean(dim=(1, 2, 3)))  # real forward
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.allclose(grad, torch.full_like(x, 1 / 48))  # identity backward (straight through)


def test_wrapper_reports_the_metric_direction_range_and_a_distinct_identity():
    class Lower(MeanMetric):
        name = "lower-metric"
        higher_is_better = False
        range = (0.0, 10.0)

    target = DefendedMetric(Lower(), Halve())
    assert target.higher_is_better is False and target.span == 10.0
    assert target.label == "lower-metric|halve"
    keys = {DefendedMetric(MeanMetric(), d).key() for d in (Halve(), SeedRecorder())}
    keys.add(DefendedMetric(Lower(), Halve()).key())
    keys.add(DefendedMetric(MeanMetric(), SeedRecorder(), samples=4).key())
    assert len(keys) == 4  # e.g. UAP caches its perturbation per metric key
    assert DefendedMetric(MeanMetric(), Halve(), seed=1).key() == DefendedMetric(MeanMetric(), Halve(), seed=2).key()
