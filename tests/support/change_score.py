"""A third-party-style score plugin: one key column, lower is better, in the rankings with its interval."""

from __future__ import annotations

from iqadef import ImageScore, ScoreColumn, hookimpl


class DefenceChange(ImageScore):
    """Mean absolute change a defence makes to the clean image (lower: it leaves x alone)."""

    name = "defence-change"
    columns = (ScoreColumn("defence_change", "lower", key=True, ranking="interval", title="change of x"),)

    def compute(self, cells):
        return {"defence_change": (cells.def_clean - cells.clean).abs().flatten(1).mean(1).cpu()}


@hookimpl
def iqadef_register_scores(register):
    register(DefenceChange)
