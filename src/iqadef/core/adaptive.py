"""Adaptive attacks: attack the metric *through* the defence (BPDA and EOT, Athalye et al. 2018).

:class:`DefendedMetric` wraps a metric and a defence into a metric ``f(D(x))`` that any attack can
target unchanged. Differentiable defences are differentiated through; the others go through
:meth:`Defence.forward`, i.e. BPDA with their ``estimate_forward``; randomised defences are averaged
over ``samples`` draws (EOT) whose seeds the attacker chooses (it does not know the evaluation seed).

EOT draws fresh randomness on every call of :meth:`DefendedMetric.score` (i.e. every attack step), as
Athalye et al. do, instead of reusing one fixed set of draws that the attack could overfit. The draws
follow from ``seed`` and the call count only, so a fresh ``DefendedMetric`` replays the same attack.
The K draws of a step are scored in one metric call on the stacked ``B*K`` images (one forward and one
backward of the metric per step, not K), and the spread of the K values is kept (:attr:`draw_variance`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from iqadef.core.base import Defence, Metric, answer_for
from iqadef.core.guard import Tripwire, checked_call


def eot_seed(seed: int, index: int) -> int:
    """The defence seed of EOT draw ``index`` for an attack seeded with ``seed``."""
    digest = hashlib.sha256(f"eot:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class DefendedMetric(Metric):
    """``f(D(x))`` for attacks: the metric seen through a defence (BPDA/EOT gradients)."""

    name = "defended-metric"

    def __init__(
        self,
        metric: Metric,
        defence: Defence,
        *,
        samples: int = 1,
        seed: int = 0,
        tripwire: Tripwire | None = None,
        stack: bool = True,
    ):
        super().__init__()
        if samples < 1:
            raise ValueError(f"DefendedMetric: samples must be >= 1, got {samples}")
        self.metric = metric
        self.defence = defence
        self.samples = samples if defence.randomized else 1
        self.seed = seed
        self.tripwire = tripwire
        #: Score the EOT draws of a step in one metric call (False: one call per draw, as before).
        self.stack = stack
        self.calls = 0
        #: The K values ``f(D_k(x))`` of the last call, ``[K, B]`` (detached).
        self.last_draws: torch.Tensor | None = None
        answer_for(self, metric)

    @property
    def label(self) -> str:
        return f"{self.metric.label}|{self.defence.label}"

    def identity(self) -> dict[str, Any]:
        """The wrapped metric, the defence and the EOT size: attacks that cache per metric (UAP) must
        not share one entry between defences. The attacker's seed is left out on purpose: with EOT the
        target is the expectation over the defence's randomness, which does not depend on it."""
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "metric": self.metric.identity(),
            "defence": self.defence.identity(),
            "samples": self.samples,
        }

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of ``f(D(images))`` over the EOT draws. Neither plugin may write into the attack's images
        or the defence's output (version counters; a write raises
        :class:`~iqadef.core.guard.InputModified`, which also trips ``tripwire`` if the attack swallows it)."""
        first = self.calls * self.samples
        self.calls += 1
        defence = f"defence {self.defence.label!r}"
        draws = []
        for k in range(self.samples):
            seed = eot_seed(self.seed, first + k) if self.defence.randomized else None
            draws.append(
                checked_call(
                    defence,
                    "the attack's images",
                    images,
                    lambda: self.defence.forward(images, seed=seed),
                    self.tripwire,
                )
            )
        values = self._score_draws(draws)
        self.last_draws = torch.stack([v.detach().reshape(-1) for v in values])
        total = values[0]
        for value in values[1:]:  # summed draw by draw, in order: the values of one call per draw
            total = total + value
        return total / self.samples

    @property
    def draw_variance(self) -> torch.Tensor | None:
        """Per image, the variance over the EOT draws of the last call's ``f(D_k(x))`` (unbiased; ``[B]``);
        None before the first call or with one draw. Its square root over sqrt(K) is the standard error of
        the EOT estimate."""
        if self.last_draws is None or self.last_draws.shape[0] < 2:
            return None
        return self.last_draws.var(dim=0)

    def _score_draws(self, draws: list[torch.Tensor]) -> list[torch.Tensor]:
        """``f`` of each draw; draws of one shape in one call on their stacked images (a defence whose output
        size varies between draws, such as a random crop of random size, is scored in one call per size)."""
        metric = f"metric {self.metric.label!r}"
        what = "the attack's images seen through the defence"
        if not self.stack or len(draws) == 1:
            return [checked_call(metric, what, d, lambda d=d: self.metric.score(d), self.tripwire) for d in draws]
        groups: dict[tuple, list[int]] = {}
        for k, d in enumerate(draws):
            groups.setdefault((tuple(d.shape[1:]), d.dtype), []).append(k)
        values: list[torch.Tensor | None] = [None] * len(draws)
        for members in groups.values():
            stacked = torch.cat([draws[k] for k in members]) if len(members) > 1 else draws[members[0]]
            scores = checked_call(metric, what, stacked, lambda: self.metric.score(stacked), self.tripwire)
            for k, chunk in zip(members, scores.reshape(len(members), -1, *scores.shape[1:])):
                values[k] = chunk
        return values  # type: ignore[return-value]
