"""Median-blur purifier: a median filter removes isolated, noise-like perturbations while keeping edges."""

from __future__ import annotations

import torch
from kornia.filters import median_blur

from iqadef import Defence, Param, hookimpl

from ._classic import KERNEL_PRESETS, pad_reflect, require_odd_kernel


class MedianBlur(Defence):
    """Median blur: per-channel median over a k×k window, the border reflect-padded (edge pixel not repeated).

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/median-blur/run.py), which pads with
    ``F.pad(mode='reflect')`` and takes the median of each window. kornia does the median; the image is padded
    here first and cropped back, so kornia's own border handling never matters.
    """

    name = "median-blur"
    differentiable = True
    params = (Param("kernel_size", int, 3, low=1, high=63, presets=KERNEL_PRESETS, help="odd window side in pixels"),)
    kernel_size: int

    def __init__(self, where: str | None = None, **values):
        super().__init__(where, **values)
        require_odd_kernel(self, where)

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        pad = self.kernel_size // 2
        if pad == 0:
            return images
        height, width = images.shape[-2:]
        filtered = median_blur(pad_reflect(images, pad, pad, pad, pad), self.kernel_size)
        return filtered[..., pad : pad + height, pad : pad + width]


@hookimpl
def iqadef_register_defences(register):
    register(MedianBlur)
