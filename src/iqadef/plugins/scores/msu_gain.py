"""Relative and absolute gains of the MSU defence benchmark, per image, for three pairs of scores."""

from __future__ import annotations

import torch

from iqadef import ImageScore, ScoreColumn, hookimpl

from ._measures import as_float_tensor

#: eps of the reference's ``rel_gain`` (adversarial-defenses-for-iqa, defence_scoring_methods.py).
REL_EPS = 1e-6


class MsuGain(ImageScore):
    """MSU relative gain |a-b|/(a+1e-6) and absolute gain |a-b|/range for three score pairs.

    Pairs (a, b): ``x_dxa`` = (f(x), f(D(x_a))) "robust", ``x_xa`` = (f(x), f(x_a)) "non-purified",
    ``dx_dxa`` = (f(D(x)), f(D(x_a))) "both defended". Columns ``rel_gain_<pair>``,
    ``abs_gain_<pair>``; range is the metric's ``high - low``. The group mean is the reference value.
    """

    name = "msu-gain"
    report_order = 30
    columns = tuple(
        ScoreColumn(f"{kind}_gain_{pair}", "lower", key=True)
        for pair in ("x_dxa", "x_xa", "dx_dxa")
        for kind in ("rel", "abs")
    )

    def compute(self, cells) -> dict[str, torch.Tensor]:
        f = {
            "x": as_float_tensor(cells.f_clean),
            "xa": as_float_tensor(cells.f_adv),
            "dx": as_float_tensor(cells.f_def_clean),
            "dxa": as_float_tensor(cells.f_def_adv),
        }
        span = float(cells.metric.span) or 1.0
        out = {}
        for ref, other in (("x", "dxa"), ("x", "xa"), ("dx", "dxa")):
            diff = (f[ref] - f[other]).abs()
            out[f"rel_gain_{ref}_{other}"] = diff / (f[ref] + REL_EPS)
            out[f"abs_gain_{ref}_{other}"] = diff / span
        return out


@hookimpl
def iqadef_register_scores(register):
    register(MsuGain)
