"""Zhang et al. (2022) attack with an LPIPS-VGG fidelity term."""

from __future__ import annotations

from pathlib import Path

import torch

from iqadef import Param, hookimpl

from ._perceptual import LPIPS_VGG_LIN, VGG16_BACKBONE, LpipsVgg, NetworkDistanceAttack


class ZhangLpips(NetworkDistanceAttack):
    """Zhang et al. 2022: Adam on the pixels, loss = LPIPS-VGG(x_adv, x) + 1 - f(x_adv)/range.

    From "Perceptual attacks of no-reference image quality models with human-in-the-loop"; the reference
    code (msu-video-group/adversarial-defenses-for-iqa, zhang-et-al-*) runs 10 Adam steps at lr 0.005 with
    IQA_pytorch's LPIPSvgg as the distance, clamping the image to [0, 1] after each step.
    """

    name = "zhang-lpips"
    version = "1"
    params = NetworkDistanceAttack.params + (
        Param("backbone_path", Path, None, "explicit path to torchvision's vgg16-397923af.pth"),
        Param("calibration_path", Path, None, "explicit path to LPIPS' v0.1 vgg.pth (lin layers)"),
    )
    backbone_path: str | None
    calibration_path: str | None
    weights = (VGG16_BACKBONE, LPIPS_VGG_LIN)

    def setup(self, device: torch.device) -> None:
        self.network = LpipsVgg.load(self.backbone_path, self.calibration_path)


@hookimpl
def iqadef_register_attacks(register):
    register(ZhangLpips)
