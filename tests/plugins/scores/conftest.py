"""Shared helpers for the score tests: a stand-in metric and CellBatch builders."""

from __future__ import annotations

import pytest
import torch

from iqadef import Metric
from iqadef.core.cells import CellBatch


class RangeMetric(Metric):
    """A stand-in metric with range 0..100 (its score is never called by the scores)."""

    name = "stand-in"
    range = (0.0, 100.0)

    def score(self, images):
        return images.mean(dim=(1, 2, 3)) * 100


def make_cells(clean, adv, def_clean, def_adv, f_clean, f_adv, f_def_clean, f_def_adv, metric=None):
    t = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
    return CellBatch(
        clean=clean,
        adv=adv,
        def_clean=def_clean,
        def_adv=def_adv,
        f_clean=t(f_clean),
        f_adv=t(f_adv),
        f_def_clean=t(f_def_clean),
        f_def_adv=t(f_def_adv),
        metric=metric or RangeMetric(),
    )


@pytest.fixture
def metric():
    return RangeMetric()
