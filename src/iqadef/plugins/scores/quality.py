"""How much a defence changes the image: the two SSIM+PSNR combinations of the reference codes."""

from __future__ import annotations

import torch

from iqadef import ImageScore, hookimpl

from ._measures import match_size, psnr, ssim


class QualityScore(ImageScore):
    """Quality 0.5*(SSIM + PSNR/80) and similarity SSIM + PSNR/40 of x vs D(x_a) (higher = closer).

    ``quality_score`` follows adversarial_purification ``test.py``; ``similarity_score`` (x vs D(x_a))
    and ``similarity_score_clean`` (x vs D(x)) follow adversarial-defenses-for-iqa
    ``defence_scoring_methods.py``. PSNR has data range 1 and is capped at 100 dB.
    """

    name = "quality"

    def compute(self, cells) -> dict[str, torch.Tensor]:
        x = cells.clean
        with torch.no_grad():
            dxa = match_size(cells.def_adv, x)
            dx = match_size(cells.def_clean, x)
            s_adv, p_adv = cells.pair_measure("ssim", x, dxa, ssim), psnr(x, dxa)
            s_clean, p_clean = cells.pair_measure("ssim", x, dx, ssim), psnr(x, dx)
        return {"quality_score": 0.5 * (s_adv + p_adv / 80.0),
                "similarity_score": s_adv + p_adv / 40.0,
                "similarity_score_clean": s_clean + p_clean / 40.0}


@hookimpl
def iqadef_register_scores(register):
    register(QualityScore)
