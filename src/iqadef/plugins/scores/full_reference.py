"""PSNR, SSIM, MSE, MAE and L-inf between the five image pairs of a cell (as the MSU defence code)."""

from __future__ import annotations

import torch

from iqadef import ImageScore, ScoreColumn, hookimpl

from ._measures import PAIRS, measure_batches

_ROLES = {
    "psnr_x_xa": "attack_psnr",
    "ssim_x_xa": "attack_ssim",
    "psnr_x_dxa": "defended_psnr",
    "ssim_x_dxa": "defended_ssim",
    "linf_x_xa": "attack_linf",
}


class FullReferenceMeasures(ImageScore):
    """PSNR/SSIM/MSE/MAE/L-inf for (x,x_a), (x,D(x)), (x,D(x_a)), (x_a,D(x_a)), (D(x),D(x_a)).

    Columns ``<measure>_<pair>`` with measure in psnr, ssim, mse, mae, linf and pair in x_xa, x_dx,
    x_dxa, xa_dxa, dx_dxa. Data range 1; PSNR is +inf for identical images (as scikit-image, which the
    reference calls); defended images are resized back to x's size (bilinear) when compared with x or x_a.
    """

    name = "full-reference"
    #: PSNR and SSIM are higher the closer the pair; MSE, MAE and L-inf lower. The roles are what the report
    #: and the verdict read (iqadef.core.columns.ROLES).
    columns = tuple(
        ScoreColumn(
            f"{m}_{p}",
            "higher" if m in ("psnr", "ssim") else "lower",
            role=_ROLES.get(f"{m}_{p}"),
        )
        for p in PAIRS
        for m in ("psnr", "ssim", "mse", "mae", "linf")
    )

    def compute(self, cells) -> dict[str, torch.Tensor]:
        # Computed for all the defences of the unit at once when the runner groups them (shared pairs once).
        with torch.no_grad():
            return dict(cells.batched("full-reference", measure_batches))

    @classmethod
    def column_names(cls) -> list[str]:
        return [c.name for c in cls.columns]


@hookimpl
def iqadef_register_scores(register):
    register(FullReferenceMeasures)
