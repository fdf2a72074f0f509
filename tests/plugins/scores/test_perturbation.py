"""``l2_x_xa``: the L2 size of the perturbation, beside full-reference's L-inf, PSNR and SSIM of (x, x_a)."""

from __future__ import annotations

import math

import pytest
import torch

from iqadef.plugins.scores.full_reference import FullReferenceMeasures
from iqadef.plugins.scores.perturbation import PerturbationL2

from .conftest import make_cells


def test_l2_is_the_norm_of_the_difference_and_agrees_with_the_memoised_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 16, 12), generator=g)
    xa = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    expected = (xa - x).flatten(1).double().norm(dim=1)
    alone = PerturbationL2().compute(make_cells(x, xa, x, xa, [1, 1], [1, 1], [1, 1], [1, 1]))["l2_x_xa"]
    assert alone.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    cells = make_cells(x, xa, x, xa, [1, 1], [1, 1], [1, 1], [1, 1])
    full = FullReferenceMeasures().compute(cells)  # memoises the pair's MSE; the L2 reuses it
    after = PerturbationL2().compute(cells)["l2_x_xa"]
    assert after.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert after.tolist() == pytest.approx([math.sqrt(m * 3 * 16 * 12) for m in full["mse_x_xa"].tolist()])
    unchanged = PerturbationL2().compute(make_cells(x, x, x, x, [1, 1], [1, 1], [1, 1], [1, 1]))["l2_x_xa"]
    assert unchanged.tolist() == [0.0, 0.0]
