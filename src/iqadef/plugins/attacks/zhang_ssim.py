"""Zhang et al. (2022) attack with an SSIM fidelity term."""

from __future__ import annotations

import torch

from iqadef import hookimpl

from ._perceptual import PerceptualAdamAttack, ssim_distance


class ZhangSsim(PerceptualAdamAttack):
    """Zhang et al. 2022: Adam on the pixels, loss = (1 - SSIM(x_adv, x)) + 1 - f(x_adv)/range.

    From "Perceptual attacks of no-reference image quality models with human-in-the-loop"; the reference
    code runs 10 Adam steps at lr 0.005 with IQA_pytorch's SSIM loss (11x11 Gaussian window, sigma 1.5,
    no padding), clamping the image to [0, 1] after each step. Needs no weights.
    """

    name = "zhang-ssim"
    version = "1"

    def distance(self, adversarial: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return ssim_distance(adversarial, reference)


@hookimpl
def iqadef_register_attacks(register):
    register(ZhangSsim)
