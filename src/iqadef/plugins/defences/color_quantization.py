"""Colour-quantisation purifier: rounding each channel to a few levels erases perturbations smaller than a step."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl


class ColorQuantization(Defence):
    """Colour quantisation: round every channel to n evenly spaced levels, round(x·(n−1))/(n−1).

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/color-quantization/run.py,
    parameter ``npp``). Rounding has zero gradient almost everywhere, so it is not differentiable; adaptive
    attacks (BPDA) use the identity as its backward pass, i.e. the straight-through estimator.
    """

    name = "color-quantization"
    params = (
        Param(
            "levels",
            int,
            16,
            low=2,
            high=256,
            presets=(2, 5, 16, 20, 25),
            help="number of levels per channel (reference name: npp)",
        ),
    )
    levels: int

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        steps = self.levels - 1
        return torch.round(images * steps) / steps


@hookimpl
def iqadef_register_defences(register):
    register(ColorQuantization)
