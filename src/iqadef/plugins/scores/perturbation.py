"""The L2 size of the attack's perturbation, ||x_a - x||_2 (the benchmark's budgets are in L-inf, L2, PSNR, SSIM).

L-inf, PSNR and SSIM of (x, x_a) are columns of ``full-reference`` already; this adds the L2 norm over all
pixels and channels (pixels in [0, 1]), so that attacks bounded in different norms can be compared at equal
size.
"""

from __future__ import annotations

import torch

from iqadef import ImageScore, ScoreColumn, hookimpl

from ._measures import diff_measures, matched


class PerturbationL2(ImageScore):
    """``l2_x_xa``: the L2 norm of x_a - x over all pixels and channels, from the pair's memoised MSE."""

    name = "perturbation"
    columns = (ScoreColumn("l2_x_xa"),)  # the attack's size: neither side is better

    def compute(self, cells) -> dict[str, torch.Tensor]:
        x = cells.clean
        xa = matched(cells, cells.adv, x)
        with torch.no_grad():  # the MSE that full-reference memoises for the same pair, if it ran first
            mse = cells.pair_measure("mse", x, xa, lambda a, b: diff_measures(a, b)["mse"])
        return {"l2_x_xa": (mse * x[0].numel()).sqrt().cpu()}


@hookimpl
def iqadef_register_scores(register):
    register(PerturbationL2)
