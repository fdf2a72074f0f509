"""PSNR, SSIM, MSE, MAE and L-inf between the five image pairs of a cell (as the MSU defence code)."""

from __future__ import annotations

import torch

from iqadef import ImageScore, hookimpl

from ._measures import PAIRS, pair_images, psnr_from_mse, ssim


class FullReferenceMeasures(ImageScore):
    """PSNR/SSIM/MSE/MAE/L-inf for (x,x_a), (x,D(x)), (x,D(x_a)), (x_a,D(x_a)), (D(x),D(x_a)).

    Columns ``<measure>_<pair>`` with measure in psnr, ssim, mse, mae, linf and pair in x_xa, x_dx,
    x_dxa, xa_dxa, dx_dxa. Data range 1; PSNR is +inf for identical images (as scikit-image, which the
    reference calls); defended images are resized back to x's size (bilinear) when compared with x or x_a.
    """

    name = "full-reference"

    def compute(self, cells) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for pair, (a, b) in pair_images(cells).items():
                diff = (a.detach().to(torch.float64) - b.detach().to(torch.float64)).flatten(1)
                err = diff.pow(2).mean(dim=1)
                out[f"psnr_{pair}"] = psnr_from_mse(err)
                out[f"ssim_{pair}"] = cells.pair_measure("ssim", a, b, ssim)
                out[f"mse_{pair}"] = err
                out[f"mae_{pair}"] = diff.abs().mean(dim=1)
                out[f"linf_{pair}"] = diff.abs().amax(dim=1)
        return {k: v.cpu() for k, v in out.items()}

    @staticmethod
    def columns() -> list[str]:
        return [f"{m}_{p}" for p in PAIRS for m in ("psnr", "ssim", "mse", "mae", "linf")]


@hookimpl
def iqadef_register_scores(register):
    register(FullReferenceMeasures)
