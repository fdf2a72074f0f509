"""How much a defence changes the image: the two SSIM+PSNR combinations of the reference codes."""

from __future__ import annotations

import torch

from iqadef import ImageScore, ScoreColumn, hookimpl

from ._measures import STUDY_IDENTICAL_PSNR_DB, matched, mse, psnr_from_mse, ssim


class QualityScore(ImageScore):
    """Quality 0.5*(SSIM + PSNR/80) and similarity SSIM + PSNR/40 of x vs D(x_a) (higher = closer).

    ``quality_score`` follows adversarial_purification ``test.py`` (``get_score``), including its rule that
    PSNR counts as 150 dB when the attacked image equals the clean one; ``similarity_score`` (x vs D(x_a))
    and ``similarity_score_clean`` (x vs D(x)) follow adversarial-defenses-for-iqa
    ``defence_scoring_methods.py``. PSNR has data range 1 and is +inf for identical images, so a score
    is +inf there too, as in the reference (aggregates leave it out and count it).
    """

    name = "quality"
    report_order = 20
    columns = (
        ScoreColumn("quality_score", "higher", key=True, ranking="interval", title="quality score"),
        ScoreColumn("similarity_score", "higher", key=True, ranking="mean"),
        ScoreColumn("similarity_score_clean", "higher", key=True),
    )

    def compute(self, cells) -> dict[str, torch.Tensor]:
        x = cells.clean
        with torch.no_grad():
            dxa = matched(cells, cells.def_adv, x)
            dx = matched(cells, cells.def_clean, x)
            # SSIM and MSE of these pairs are memoised by the full-reference score when it runs first
            s_adv, p_adv = (
                cells.pair_measure("ssim", x, dxa, ssim),
                psnr_from_mse(cells.pair_measure("mse", x, dxa, mse)),
            )
            s_clean = cells.pair_measure("ssim", x, dx, ssim)
            p_clean = psnr_from_mse(cells.pair_measure("mse", x, dx, mse))
            unattacked = cells.pair_measure("mse", x, matched(cells, cells.adv, x), mse) == 0
            p_study = torch.where(unattacked, torch.full_like(p_adv, STUDY_IDENTICAL_PSNR_DB), p_adv)
        return {
            "quality_score": 0.5 * (s_adv + p_study / 80.0),
            "similarity_score": s_adv + p_adv / 40.0,
            "similarity_score_clean": s_clean + p_clean / 40.0,
        }


@hookimpl
def iqadef_register_scores(register):
    register(QualityScore)
