"""What the runner hands to per-image scores: one batch of grid cells (same metric, attack, defence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .base import Metric


@dataclass
class CellBatch:
    """Images and metric values of ``B`` cells.

    ``clean`` x, ``adv`` x_a (as stored: 8-bit quantised), ``def_clean`` D(x) and ``def_adv`` D(x_a)
    (the defence's output, which may have another size than x when the defence crops or resizes),
    and the four scores f(x), f(x_a), f(D(x)), f(D(x_a)) as ``[B]`` tensors. ``metric`` gives the
    range and direction of the scores.
    """

    clean: torch.Tensor
    adv: torch.Tensor
    def_clean: torch.Tensor
    def_adv: torch.Tensor
    f_clean: torch.Tensor
    f_adv: torch.Tensor
    f_def_clean: torch.Tensor
    f_def_adv: torch.Tensor
    metric: Metric
    #: Results shared between scores (and, in the runner, between the cells of one image batch).
    memo: dict = field(default_factory=dict)

    def pair_measure(self, name: str, a: torch.Tensor, b: torch.Tensor,
                     compute: Callable[[torch.Tensor, torch.Tensor], Any]) -> Any:
        """``compute(a, b)``, computed once per (name, a, b): SSIM of x vs x_a is the same for every defence."""
        key = (name, id(a), id(b))
        hit = self.memo.get(key)
        if hit is not None and hit[0] is a and hit[1] is b:  # the memo holds a and b, so ids stay unique
            return hit[2]
        value = compute(a, b)
        self.memo[key] = (a, b, value, _versions(value))
        return value

    def changed_measures(self) -> list[str]:
        """Names of memoised measures changed in place since they were computed (``ssim *= 2`` on a value
        :meth:`pair_measure` returned would change it for every later cell; the runner fails the score)."""
        return [key[0] for key, hit in self.memo.items() if len(hit) > 3 and _versions(hit[2]) != hit[3]]

    def __len__(self) -> int:
        return int(self.clean.shape[0])


def _versions(value: Any) -> tuple[int, ...]:
    """Version counters of the tensors in ``value`` (a tensor, or a tuple/list/dict of them)."""
    if isinstance(value, torch.Tensor):
        return (value._version,)
    if isinstance(value, (tuple, list)):
        return tuple(v for item in value for v in _versions(item))
    if isinstance(value, dict):
        return tuple(v for item in value.values() for v in _versions(item))
    return ()
