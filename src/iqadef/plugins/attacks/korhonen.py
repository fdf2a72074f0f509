"""Korhonen et al.: Adam on the pixels with the gradient masked to textured regions."""

from __future__ import annotations

import kornia
import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import adam_on_images

#: 5x5 disc used by the reference to dilate the activity map.
_DISC_5X5 = torch.tensor([[0, 1, 1, 1, 0],
                          [1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1],
                          [0, 1, 1, 1, 0]], dtype=torch.float32)


def spatial_activity_map(images: torch.Tensor) -> torch.Tensor:
    """Where changes are hard to see: Sobel magnitude of the luma, normalised per image, dilated.

    Returns ``[B, 1, H, W]`` in [0, 1]. As in the reference, the one-pixel border is zeroed before
    normalising by the maximum, a flat image gets an all-ones map, and the result is dilated with a
    5x5 disc.
    """
    luma = kornia.color.rgb_to_ycbcr(images)[:, :1]
    activity = kornia.filters.sobel(luma, normalized=True, eps=0.0)
    border = torch.zeros_like(activity)
    border[..., 1:-1, 1:-1] = 1.0
    activity = activity * border
    peak = activity.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    activity = torch.where(peak > 0, activity / peak.clamp_min(1e-12), torch.ones_like(activity))
    kernel = _DISC_5X5.to(device=images.device, dtype=images.dtype)
    return kornia.morphology.dilation(activity, kernel)


class Korhonen(Attack):
    """Korhonen et al.: Adam (lr 0.005, 10 iterations) with the gradient masked by a spatial-activity map.

    Reference: ``methods/korhonen-et-al/run.py`` of MSU_Metrics_Robustness_Benchmark (Korhonen & You,
    "Adversarial attacks against blind image quality assessment models", 2022). Unbounded: the
    mask keeps changes in textured areas, where they are less visible.
    """

    name = "korhonen"
    norm = None
    params = (
        Param("lr", float, 0.005, help="Adam learning rate", low=0.0,
              presets=(5e-05, 0.00011, 0.00023, 0.0005, 0.00108, 0.00232, 0.005, 0.0108, 0.0232, 0.05)),
        Param("iters", int, 10, help="number of Adam steps", low=1),
    )

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        mask = spatial_activity_map(images.detach())
        return adam_on_images(metric, images, lr=self.lr, iters=self.iters, mask=mask)


@hookimpl
def iqadef_register_attacks(register):
    register(Korhonen)
