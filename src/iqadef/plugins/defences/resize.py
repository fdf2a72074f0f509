"""Resize purifier: downscaling averages away high-frequency perturbations (the output stays small)."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import resize, scaled_size


class Resize(Defence):
    """Resize: shrink the images by a scale factor (bilinear); the output keeps the new size.

    Reference: torchvision ``Resize((int(H*scale), int(W*scale)))`` in msu-video-group/adversarial-defenses-for-iqa
    (metrics/defences/resize/run.py); the metric then scores the smaller image. On tensors in the reference's
    torchvision 0.15 that resize is not antialiased, so neither is this one by default; ``antialias: true``
    low-pass filters first (torchvision 0.17+'s default), which removes more of a high-frequency perturbation.
    """

    name = "resize"
    differentiable = True
    preserves_size = False
    params = (
        Param(
            "scale",
            float,
            0.5,
            low=0.01,
            high=1.0,
            presets=(0.1, 0.25, 0.5, 0.75, 0.9),
            help="output side / input side (sides are truncated to whole pixels)",
        ),
        Param(
            "antialias",
            bool,
            False,
            help="low-pass filter before shrinking (reference: no, as torchvision 0.15 on tensors)",
        ),
    )
    scale: float
    antialias: bool

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return resize(images, scaled_size(images, self.scale), self.antialias).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(Resize)
