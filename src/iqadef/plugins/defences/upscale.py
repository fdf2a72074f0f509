"""Down-then-up-scale purifier: a resize round trip that removes fine detail but keeps the image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iqadef import Defence, Param, hookimpl

from ._classic import resize, scaled_size


class Upscale(Defence):
    """Upscale: shrink by a scale factor (bilinear), then interpolate back to the original size.

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/upscale/run.py): torchvision
    ``Resize`` down (not antialiased on tensors in its torchvision 0.15; ``antialias: true`` filters first),
    then ``nn.Upsample(mode='bilinear')`` (align_corners False). The reference upsamples to a fixed size of its
    data set (384×512); here it goes back to each input's own size.
    """

    name = "upscale"
    differentiable = True
    params = (
        Param(
            "scale",
            float,
            0.5,
            low=0.01,
            high=1.0,
            presets=(0.1, 0.25, 0.5, 0.75, 0.9),
            help="intermediate side / input side",
        ),
        Param(
            "mode",
            str,
            "bilinear",
            choices=("bilinear", "bicubic", "nearest"),
            help="interpolation back up to the input size (reference: bilinear)",
        ),
        Param(
            "antialias",
            bool,
            False,
            help="low-pass filter before shrinking (reference: no, as torchvision 0.15 on tensors)",
        ),
    )
    scale: float
    mode: str
    antialias: bool

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        small = resize(images, scaled_size(images, self.scale), self.antialias)
        align = False if self.mode != "nearest" else None
        up = F.interpolate(small, size=tuple(images.shape[-2:]), mode=self.mode, align_corners=align)
        return up.clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(Upscale)
