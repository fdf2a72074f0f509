"""Korhonen et al.: Adam on the pixels with the gradient masked to textured regions."""

from __future__ import annotations

import kornia
import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import adam_on_images

#: 5x5 disc used by the reference to dilate the activity map.
_DISC_5X5 = torch.tensor(
    [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.float32
)

#: The reference divides the map by 255 before multiplying the gradient. Adam is scale-invariant
#: except for its eps (1e-8), so this factor changes the steps of pixels with small gradients.
REFERENCE_MASK_SCALE = 1.0 / 255.0


def spatial_activity_map(images: torch.Tensor, *, magnitude: bool = False) -> torch.Tensor:
    """The reference's spatial-activity map ``[B, 1, H, W]`` (``makeSpatialActivityMap`` in
    ``methods/korhonen-et-al/run.py``, MSU_Metrics_Robustness_Benchmark).

    Luma on the reference's scale: OpenCV's BT.601 Y of the 0..255 image, then
    ``(Y * (235 - 16) + 16) / 255`` (kornia's ``rgb_to_ycbcr`` gives the same Y on 0..1). Then
    scipy's default ``ndimage.sobel``: one direction only, the derivative along the width, *signed*.
    The one-pixel border is zeroed and the map divided by its maximum (not the absolute maximum:
    pixels where the luma falls to the right stay negative, which reverses the gradient there);
    when that maximum is 0 the reference adds 1 instead, which is where the luma's scale shows.
    Finally a grey dilation (maximum) over a 5x5 disc. ``magnitude=True`` uses the two-direction
    Sobel magnitude instead (non-negative; an iqadef option, not the reference).
    """
    luma = kornia.color.rgb_to_ycbcr(images)[:, :1] * (235 - 16) + 16 / 255
    sobel = kornia.filters.spatial_gradient(luma, mode="sobel", normalized=False)  # [B, 1, 2, H, W]
    activity = sobel.norm(dim=2) if magnitude else sobel[:, :, 0]  # index 0: d/dx, as ndimage.sobel(axis=-1)
    interior = torch.zeros_like(activity)
    interior[..., 1:-1, 1:-1] = activity[..., 1:-1, 1:-1]
    peak = interior.amax(dim=(1, 2, 3), keepdim=True)  # >= 0: the zeroed border takes part
    normalised = torch.where(peak == 0, interior + 1.0, interior / torch.where(peak == 0, 1.0, peak))
    kernel = _DISC_5X5.to(device=images.device, dtype=images.dtype)
    return kornia.morphology.dilation(normalised, kernel)  # geodesic border: outside pixels ignored, as cv2


class Korhonen(Attack):
    """Korhonen et al.: Adam (lr 0.005, 10 iterations) with the gradient times a spatial-activity map / 255.

    Reference: ``methods/korhonen-et-al/run.py`` of MSU_Metrics_Robustness_Benchmark (Korhonen & You,
    "Adversarial attacks against blind image quality assessment models", 2022). Unbounded: the
    mask keeps changes in textured areas, where they are less visible. The map is computed per
    image (the reference computes it from the first image of the batch; it runs batches of one).
    """

    name = "korhonen"
    version = "2"  # 2: matches the reference (see docs/fidelity.md)
    norm = None
    params = (
        Param(
            "lr",
            float,
            0.005,
            help="Adam learning rate",
            low=0.0,
            presets=(5e-05, 0.00011, 0.00023, 0.0005, 0.00108, 0.00232, 0.005, 0.0108, 0.0232, 0.05),
        ),
        Param("iters", int, 10, help="number of Adam steps", low=1),
        Param(
            "sobel_magnitude",
            bool,
            False,
            help="mask with the non-negative two-direction Sobel magnitude instead of the reference's "
            "signed one-direction Sobel (which reverses the gradient where the luma falls)",
        ),
    )
    lr: float
    iters: int
    sobel_magnitude: bool

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        mask = spatial_activity_map(images.detach(), magnitude=self.sobel_magnitude) * REFERENCE_MASK_SCALE
        return adam_on_images(metric, images, lr=self.lr, iters=self.iters, mask=mask)


@hookimpl
def iqadef_register_attacks(register):
    register(Korhonen)
