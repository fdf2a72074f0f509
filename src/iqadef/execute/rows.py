"""The rows of one defence's cells of a unit: the one row builder of purified and certified cells alike.

A row is the cell's identity (:func:`~iqadef.plan.grid.cell_row`), its four metric values, the cached
x_a it used (``adv_path``, ``queries``), its score columns and, for the run's first ``examples`` images,
an example PNG. A NaN or infinite metric value fails the row and names the values.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from iqadef.core.dataset import ImageItem
from iqadef.plan.grid import Unit, cell_row
from iqadef.store.artifacts import example_name, png_bytes

#: How a row's four metric values are named in its error message when one is NaN/inf.
VALUE_NAMES = ("f(x)", "f(x_a)", "f(D(x))", "f(D(x_a))")


def build_rows(
    config: Any,
    unit: Unit,
    d: int,
    items: Sequence[ImageItem],
    keys: Sequence[str],
    values: Sequence[torch.Tensor],
    adv_paths: Sequence[str],
    queries: Callable[[str], float],
    scores: Mapping[str, torch.Tensor],
    extra: Callable[[int], Mapping[str, Any]],
    examples: set[str],
    example: Callable[[int], torch.Tensor],
    files: list[tuple[str, bytes]],
    names: Sequence[str] = VALUE_NAMES,
) -> list[dict[str, Any]]:
    """One row per image of the batch.

    ``values`` are f(x), f(x_a), f(D(x)), f(D(x_a)) (``names`` in messages); ``queries(adv_path)`` the
    black-box queries of an x_a; ``scores`` the per-image score columns and ``extra(i)`` the image's other
    score columns (a budget search's value, a certificate); ``example(i)`` the image shown for an example
    (its PNG is appended to ``files`` as ``(relative path, bytes)``)."""
    metric = config.metrics[unit.metric]
    rows = []
    for i, (item, key) in enumerate(zip(items, keys)):
        numbers = [float(v[i]) for v in values]
        row = cell_row(config, unit, d, item, key)
        row.update(
            f_clean=numbers[0],
            f_adv=numbers[1],
            f_def_clean=numbers[2],
            f_def_adv=numbers[3],
            adv_path=adv_paths[i],
            queries=queries(adv_paths[i]),
            scores={**{k: float(v[i]) for k, v in scores.items()}, **extra(i)},
        )
        bad = [n for n, v in zip(names, numbers) if not math.isfinite(v)]
        if bad:
            row.update(status="failed", error=f"metric {metric.label!r} returned NaN/inf for {', '.join(bad)}")
        if item.name in examples:
            rel = f"examples/{example_name(row)}.png"
            files.append((rel, png_bytes(example(i))))
            row["example_path"] = rel
        rows.append(row)
    return rows


__all__ = ["VALUE_NAMES", "build_rows"]
