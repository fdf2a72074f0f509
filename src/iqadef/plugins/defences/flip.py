"""Flip purifier: mirrors the image so a spatially tuned perturbation no longer lines up with the metric."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

_DIMS = {"hw": (2, 3), "h": (2,), "w": (3,)}


class Flip(Defence):
    """Flip: mirror the images along height and width (the reference flips both, i.e. a 180° turn).

    Reference: ``torch.flip(image, [2, 3])`` in msu-video-group/adversarial-defenses-for-iqa
    (metrics/defences/flip/run.py) and wianluna/adversarial_purification.
    """

    name = "flip"
    differentiable = True
    geometric = True
    params = (
        Param(
            "axes",
            str,
            "hw",
            choices=tuple(_DIMS),
            help="axes to flip: 'hw' both (reference), 'h' upside down, 'w' left-right",
        ),
    )
    axes: str

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return torch.flip(images, _DIMS[self.axes])


@hookimpl
def iqadef_register_defences(register):
    register(Flip)
