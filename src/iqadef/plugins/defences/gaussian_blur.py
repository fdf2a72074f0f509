"""Gaussian-blur purifier: low-pass filtering suppresses high-frequency adversarial noise."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import KERNEL_PRESETS, gaussian_blur, opencv_sigma, require_odd_kernel


class GaussianBlur(Defence):
    """Gaussian blur: k×k Gaussian filter, reflect-padded; sigma from k as OpenCV does unless given.

    Reference: torchvision ``GaussianBlur(k, 0.3*((k-1)*0.5 - 1) + 0.8)`` in
    msu-video-group/adversarial-defenses-for-iqa (metrics/defences/gaussian-blur/run.py).
    """

    name = "gaussian-blur"
    differentiable = True
    params = (
        Param("kernel_size", int, 3, low=1, high=63, presets=KERNEL_PRESETS, help="odd kernel side in pixels"),
        Param(
            "sigma",
            float,
            None,
            low=1e-3,
            help="standard deviation in pixels; null: 0.3*((k-1)*0.5 - 1) + 0.8 (OpenCV's rule)",
        ),
    )
    kernel_size: int
    sigma: float | None

    def __init__(self, where: str | None = None, **values):
        super().__init__(where, **values)
        require_odd_kernel(self, where)

    @property
    def effective_sigma(self) -> float:
        return self.sigma if self.sigma is not None else opencv_sigma(self.kernel_size)

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        # the kernel sums to 1 only up to float rounding: keep the [0, 1] contract exactly
        return gaussian_blur(images, self.kernel_size, self.effective_sigma).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(GaussianBlur)
