"""An example third-party iqadef plugin: feature squeezing by bit-depth reduction.

Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks" (NDSS 2018)
squeeze the colour depth of the input so that small adversarial perturbations fall inside one level.
"""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl


class BitDepthReduction(Defence):
    """Feature squeezing: keep `bits` bits per channel (Xu et al., 2018); straight-through gradient."""

    name = "bit-depth"
    version = "1"
    params = (Param("bits", int, 5, "bits kept per channel", low=1, high=8, presets=(1, 2, 3, 4, 5, 6, 7)),)
    # Rounding has zero gradient almost everywhere, so adaptive attacks use BPDA with identity
    # (the default backward_estimate of iqadef.Defence).
    differentiable = False

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(images * levels) / levels


@hookimpl
def iqadef_register_defences(register):
    register(BitDepthReduction)
