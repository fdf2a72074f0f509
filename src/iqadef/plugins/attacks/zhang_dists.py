"""Zhang et al. (2022) attack with a DISTS fidelity term."""

from __future__ import annotations

from pathlib import Path

import torch

from iqadef import Param, hookimpl

from ._perceptual import DISTS_ALPHA_BETA, VGG16_BACKBONE, Dists, NetworkDistanceAttack


class ZhangDists(NetworkDistanceAttack):
    """Zhang et al. 2022: Adam on the pixels, loss = DISTS(x_adv, x) + 1 - f(x_adv)/range.

    From "Perceptual attacks of no-reference image quality models with human-in-the-loop"; mirrors the
    reference code (msu-video-group/adversarial-defenses-for-iqa, methods/zhang-et-al-dists/run.py):
    10 Adam steps at lr 0.005 with IQA_pytorch's DISTS as the distance, NaN gradients zeroed, the image
    clamped to [0, 1] after each step.
    """

    name = "zhang-dists"
    version = "1"
    params = NetworkDistanceAttack.params + (
        Param(
            "resize", bool, True, "average-pool large images by round(min(H, W)/256) before DISTS, as IQA_pytorch does"
        ),
        Param("backbone_path", Path, None, "explicit path to torchvision's vgg16-397923af.pth"),
        Param("calibration_path", Path, None, "explicit path to DISTS' weights.pt (alpha, beta)"),
    )
    resize: bool
    backbone_path: str | None
    calibration_path: str | None
    weights = (VGG16_BACKBONE, DISTS_ALPHA_BETA)

    def setup(self, device: torch.device) -> None:
        self.network = Dists.load(self.backbone_path, self.calibration_path, resize=self.resize)


@hookimpl
def iqadef_register_attacks(register):
    register(ZhangDists)
