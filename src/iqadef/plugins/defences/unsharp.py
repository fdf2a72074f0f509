"""Unsharp-mask purifier: sharpening changes the image's fine detail in a way attacks do not anticipate."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import KERNEL_PRESETS, gaussian_blur, require_odd_kernel


class Unsharp(Defence):
    """Unsharp mask: x + amount·(x − gaussian_blur(x)), clipped to [0, 1] (blur reflect-padded).

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/unsharp/run.py): torchvision
    ``GaussianBlur(kernel_size=5, sigma=1)``, amount 1; its preset file sweeps the kernel size 3..11.
    """

    name = "unsharp"
    differentiable = True
    params = (
        Param("kernel_size", int, 5, low=1, high=63, presets=KERNEL_PRESETS, help="odd side of the Gaussian kernel"),
        Param("sigma", float, 1.0, low=1e-3, help="standard deviation of the Gaussian in pixels"),
        Param("amount", float, 1.0, low=0.0, help="strength of the sharpening"),
    )
    kernel_size: int
    sigma: float
    amount: float

    def __init__(self, where: str | None = None, **values):
        super().__init__(where, **values)
        require_odd_kernel(self, where)

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        blurred = gaussian_blur(images, self.kernel_size, self.sigma)
        return (images + self.amount * (images - blurred)).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(Unsharp)
