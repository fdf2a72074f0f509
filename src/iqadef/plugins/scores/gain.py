"""The paper's gain score: how far the purified attacked image's score is from the clean one's."""

from __future__ import annotations

import torch

from iqadef import ImageScore, ScoreColumn, hookimpl, paper_gain

from ._measures import as_float_tensor


class GainScore(ImageScore):
    """Gain |f(x) - f(D(x_a))| / f(x) (lower is better), and its clean-image twin |f(x) - f(D(x))| / f(x).

    Column ``gain`` is the paper's score (adversarial_purification ``test.py``); ``gain_clean`` is the
    same for the defence applied to the clean image (the "clean" row of Figure 3). NaN when f(x) = 0
    (:func:`iqadef.analysis.scores.paper_gain`, the formula the report averages).
    """

    name = "gain"
    report_order = 10
    columns = (ScoreColumn("gain", "lower", key=True, role="paper_gain"), ScoreColumn("gain_clean", "lower", key=True))

    def compute(self, cells) -> dict[str, torch.Tensor]:
        f_x = as_float_tensor(cells.f_clean).numpy()
        f_dxa = as_float_tensor(cells.f_def_adv).numpy()
        f_dx = as_float_tensor(cells.f_def_clean).numpy()
        return {"gain": torch.from_numpy(paper_gain(f_x, f_dxa)), "gain_clean": torch.from_numpy(paper_gain(f_x, f_dx))}


@hookimpl
def iqadef_register_scores(register):
    register(GainScore)
