"""Adaptive attacks: attack the metric *through* the defence (BPDA and EOT, Athalye et al. 2018).

:class:`DefendedMetric` wraps a metric and a defence into a metric ``f(D(x))`` that any attack can
target unchanged. Differentiable defences are differentiated through; the others go through
:meth:`Defence.forward`, i.e. BPDA with their ``backward_estimate``; randomised defences are averaged
over ``samples`` draws (EOT) whose seeds the attacker chooses (it does not know the evaluation seed).
"""

from __future__ import annotations

import hashlib

import torch

from .base import Defence, Metric


def eot_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"eot:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class DefendedMetric(Metric):
    """``f(D(x))`` for attacks: the metric seen through a defence."""

    name = "defended-metric"

    def __init__(self, metric: Metric, defence: Defence, *, samples: int = 1, seed: int = 0):
        super().__init__()
        self.metric = metric
        self.defence = defence
        self.samples = samples if defence.randomized else 1
        self.seed = seed
        self.higher_is_better = metric.higher_is_better  # type: ignore[misc]
        self.range = metric.range  # type: ignore[misc]
        self.device = metric.device

    def score(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for k in range(self.samples):
            value = self.metric.score(self.defence.forward(images, seed=eot_seed(self.seed, k)))
            total = value if total is None else total + value
        return total / self.samples
