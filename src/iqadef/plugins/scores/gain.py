"""The paper's gain score: how far the purified attacked image's score is from the clean one's."""

from __future__ import annotations

import torch

from iqadef import ImageScore, hookimpl

from ._measures import as_float_tensor, safe_ratio


class GainScore(ImageScore):
    """Gain |f(x) - f(D(x_a))| / f(x) (lower is better), and its clean-image twin |f(x) - f(D(x))| / f(x).

    Column ``gain`` is the paper's score (adversarial_purification ``test.py``); ``gain_clean`` is the
    same for the defence applied to the clean image (the "clean" row of Figure 3). NaN when f(x) = 0.
    """

    name = "gain"

    def compute(self, cells) -> dict[str, torch.Tensor]:
        f_x = as_float_tensor(cells.f_clean)
        f_dxa = as_float_tensor(cells.f_def_adv)
        f_dx = as_float_tensor(cells.f_def_clean)
        return {"gain": safe_ratio((f_x - f_dxa).abs(), f_x),
                "gain_clean": safe_ratio((f_x - f_dx).abs(), f_x)}


@hookimpl
def iqadef_register_scores(register):
    register(GainScore)
