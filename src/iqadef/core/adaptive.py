"""Adaptive attacks: attack the metric *through* the defence (BPDA and EOT, Athalye et al. 2018).

:class:`DefendedMetric` wraps a metric and a defence into a metric ``f(D(x))`` that any attack can
target unchanged. Differentiable defences are differentiated through; the others go through
:meth:`Defence.forward`, i.e. BPDA with their ``backward_estimate``; randomised defences are averaged
over ``samples`` draws (EOT) whose seeds the attacker chooses (it does not know the evaluation seed).

EOT draws fresh randomness on every call of :meth:`DefendedMetric.score` (i.e. every attack step), as
Athalye et al. do, instead of reusing one fixed set of draws that the attack could overfit. The draws
follow from ``seed`` and the call count only, so a fresh ``DefendedMetric`` replays the same attack.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .base import Defence, Metric, answer_for
from .guard import Tripwire, checked_call


def eot_seed(seed: int, index: int) -> int:
    """The defence seed of EOT draw ``index`` for an attack seeded with ``seed``."""
    digest = hashlib.sha256(f"eot:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class DefendedMetric(Metric):
    """``f(D(x))`` for attacks: the metric seen through a defence (BPDA/EOT gradients)."""

    name = "defended-metric"

    def __init__(self, metric: Metric, defence: Defence, *, samples: int = 1, seed: int = 0,
                 tripwire: Tripwire | None = None):
        super().__init__()
        if samples < 1:
            raise ValueError(f"DefendedMetric: samples must be >= 1, got {samples}")
        self.metric = metric
        self.defence = defence
        self.samples = samples if defence.randomized else 1
        self.seed = seed
        self.tripwire = tripwire
        self.calls = 0
        answer_for(self, metric)

    @property
    def label(self) -> str:
        return f"{self.metric.label}|{self.defence.label}"

    def identity(self) -> dict[str, Any]:
        """The wrapped metric, the defence and the EOT size: attacks that cache per metric (UAP) must
        not share one entry between defences. The attacker's seed is left out on purpose: with EOT the
        target is the expectation over the defence's randomness, which does not depend on it."""
        return {"kind": self.kind, "name": self.name, "version": self.version,
                "metric": self.metric.identity(), "defence": self.defence.identity(),
                "samples": self.samples}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of ``f(D(images))`` over the EOT draws. Neither plugin may write into the attack's images
        or the defence's output (version counters; a write raises
        :class:`~iqadef.core.guard.InputModified`, which also trips ``tripwire`` if the attack swallows it)."""
        first = self.calls * self.samples
        self.calls += 1
        total = None
        defence, metric = f"defence {self.defence.label!r}", f"metric {self.metric.label!r}"
        for k in range(self.samples):
            seed = eot_seed(self.seed, first + k) if self.defence.randomized else None
            defended = checked_call(defence, "the attack's images", images,
                                    lambda: self.defence.forward(images, seed=seed), self.tripwire)
            value = checked_call(metric, "the attack's images seen through the defence", defended,
                                 lambda: self.metric.score(defended), self.tripwire)
            total = value if total is None else total + value
        return total / self.samples
