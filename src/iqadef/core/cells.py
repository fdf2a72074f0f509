"""What the runner hands to per-image scores: one batch of grid cells (same metric, attack, defence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from iqadef.core.base import Metric


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
    #: The cell batches of the other defences of the same unit, when the runner computes them together.
    group: "CellGroup | None" = field(default=None, repr=False, compare=False)

    def batched(self, name: str, compute: Callable[[list["CellBatch"]], list[Any]]) -> Any:
        """This batch's item of ``compute(batches)``, computed once for all the batches of its group (the
        unit's defences, whose pairs can then be stacked and their shared pairs measured once).

        Without a group, ``compute([self])[0]``. If the group's call raises, every batch computes its own
        value alone, so that an error fails only the cells it belongs to."""
        group = self.group
        index = group.index(self) if group is not None else None
        if index is None:
            return compute([self])[0]
        hit = group.results.get(name)
        if hit is None:
            try:
                values = list(compute(group.members))
                if len(values) != len(group.members):
                    raise ValueError(f"{name}: {len(values)} results for {len(group.members)} batches")
                hit = group.results[name] = [(v, _versions(v)) for v in values]
            except Exception:  # noqa: BLE001 - each batch tries alone
                hit = group.results[name] = False
        if hit is False:
            return compute([self])[0]
        return hit[index][0]

    def pair_measure(
        self, name: str, a: torch.Tensor, b: torch.Tensor, compute: Callable[[torch.Tensor, torch.Tensor], Any]
    ) -> Any:
        """``compute(a, b)``, computed once per (name, a, b): SSIM of x vs x_a is the same for every defence."""
        key = (name, id(a), id(b))
        hit = self.memo.get(key)
        if hit is not None and hit[0] is a and hit[1] is b:  # the memo holds a and b, so ids stay unique
            return hit[2]
        value = compute(a, b)
        self.memo[key] = (a, b, value, _versions(value))
        return value

    def cached_measure(self, name: str, a: torch.Tensor, b: torch.Tensor) -> Any:
        """The value :meth:`pair_measure` holds for (name, a, b), or None."""
        hit = self.memo.get((name, id(a), id(b)))
        return hit[2] if hit is not None and hit[0] is a and hit[1] is b else None

    def changed_measures(self) -> list[str]:
        """Names of memoised measures changed in place since they were computed (``ssim *= 2`` on a value
        :meth:`pair_measure` returned would change it for every later cell; the runner fails the score)."""
        changed = [key[0] for key, hit in self.memo.items() if len(hit) > 3 and _versions(hit[2]) != hit[3]]
        if self.group is not None:
            changed += [
                name
                for name, hits in self.group.results.items()
                if hits and any(_versions(v) != versions for v, versions in hits)
            ]
        return changed

    def __len__(self) -> int:
        return int(self.clean.shape[0])


class CellGroup:
    """The cell batches of one unit's defences, computed together (:meth:`CellBatch.batched`)."""

    def __init__(self, members: list[CellBatch]):
        self.members = members
        self.results: dict[str, Any] = {}
        for member in members:
            member.group = self

    def index(self, cells: CellBatch) -> int | None:
        return next((i for i, m in enumerate(self.members) if m is cells), None)

    def release(self) -> None:
        """Break the cycle members <-> group once the group's scores are done: it holds every D(x_a) of a unit
        and their measures, which a cycle keeps until a full garbage collection (the peak RSS of a run grew by
        ~20 MB per unit before: docs/performance.md, memory)."""
        for member in self.members:
            member.group = None
        self.members, self.results = [], {}


def _versions(value: Any) -> tuple[int, ...]:
    """Version counters of the tensors in ``value`` (a tensor, or a tuple/list/dict of them)."""
    if isinstance(value, torch.Tensor):
        return (value._version,)
    if isinstance(value, (tuple, list)):
        return tuple(v for item in value for v in _versions(item))
    if isinstance(value, dict):
        return tuple(v for item in value.values() for v in _versions(item))
    return ()
