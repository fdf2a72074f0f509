"""A metric whose scores go below 0 (as tiny-iqa's range -6..86 allows): the toy sharpness - 1."""

from __future__ import annotations

from toy_plugins import ToyMetric

from iqadef import hookimpl


class ShiftedMetric(ToyMetric):
    """The toy metric minus 1: range (-1, 1); smooth images score below 0, sharp ones above."""

    name = "toy-shifted"
    range = (-1.0, 1.0)

    def score(self, images):
        return super().score(images) - 1.0


@hookimpl
def iqadef_register_metrics(register):
    register(ShiftedMetric)
