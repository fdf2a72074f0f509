"""Black-box attacks see the metric only through :class:`QueryMetric`: scores, no gradient, queries counted.

A score-based black-box attack (Square attack, Andriushchenko et al. 2020) is the standard check that a
defence does not merely hide its gradient (Carlini et al. 2019, "On evaluating adversarial robustness").
The check means something only if the attack really gets no gradient, so the runner hands an attack whose
class sets ``black_box = True`` this wrapper instead of the metric (or of the defended metric ``f(D(x))`` of
an adaptive attack): it scores a detached copy under ``torch.no_grad()``, returns detached scores, refuses
inputs that require a gradient, and counts one query per image scored.
"""

from __future__ import annotations

from typing import Any

import torch

from iqadef.core.base import Metric, answer_for
from iqadef.core.errors import IqadefError


class GradientRequested(IqadefError):
    """A black-box attack asked for a gradient (its images require grad): it would not be black-box."""


class QueryMetric(Metric):
    """The score oracle of a black-box attack on a batch of ``batch_size`` images.

    ``score(images, which=None)``: ``images[i]`` is image ``which[i]`` of the attack's batch (``which``
    None: the whole batch in order). Each image scored is one query of that image (:attr:`queries`); with
    an adaptive mode the oracle is ``f(D(x))`` and one query may run ``eot_samples`` draws of the defence.
    """

    name = "query-metric"

    def __init__(self, metric: Metric, batch_size: int):
        super().__init__()
        self._target = metric
        self.batch_size = int(batch_size)
        #: Queries per image of the batch so far (int64, on the CPU).
        self.queries = torch.zeros(self.batch_size, dtype=torch.int64)
        answer_for(self, metric)

    @property
    def label(self) -> str:
        return self._target.label

    def identity(self) -> dict[str, Any]:
        """The wrapped metric's: an attack that caches per metric keeps one entry per metric."""
        return self._target.identity()

    def key(self) -> str:
        return self._target.key()

    @property
    def total(self) -> int:
        """All queries made so far, over the batch."""
        return int(self.queries.sum())

    def score(self, images: torch.Tensor, which: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        if images.requires_grad:
            raise GradientRequested(
                f"black-box attack asked for a gradient of metric {self.label!r} (its images require grad); "
                f"a black-box attack may only query scores"
            )
        n = images.shape[0]
        if which is None:
            if n != self.batch_size:
                raise ValueError(
                    f"QueryMetric: {n} images for a batch of {self.batch_size}; pass which= (the "
                    f"batch indices of the images scored)"
                )
            index = torch.arange(n)
        else:
            index = torch.as_tensor(which, dtype=torch.int64).reshape(-1).cpu()
            if index.numel() != n or (n and (int(index.min()) < 0 or int(index.max()) >= self.batch_size)):
                raise ValueError(f"QueryMetric: which= must name {n} batch indices in [0, {self.batch_size})")
        with torch.no_grad():
            out = self._target.score(images.detach().clone())
        self.queries.index_add_(0, index, torch.ones(n, dtype=torch.int64))
        return out.detach()

    def __call__(self, images: torch.Tensor, which: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        return self.score(images, which)
