"""Differentiable JPEG purifier: JPEG compression that adaptive attacks can back-propagate through."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl

from ._classic import differentiable_jpeg


class DiffJpeg(Defence):
    """DiffJPEG: the reference's differentiable JPEG coding, so adaptive attacks can back-propagate through JPEG.

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/diffjpeg/run.py) runs Reich et
    al.'s ``DiffJPEGCoding(ste=True)`` on the image reflect-padded by ``16 - side % 16``: JFIF colour conversion
    (offset 128), 4:2:0 chroma, libjpeg quality scaling, hard rounding forward and the gradient of
    ``round(x) + (x - round(x))**3`` backward. Re-implemented in ``_jpeg_codec`` (kornia's codec converts
    colour differently and softens the rounding in the forward pass: 37-57 dB PSNR from the reference);
    this one equals the reference's output and gradient in float32 (tests/plugins/defences/test_diffjpeg_reference.py).
    """

    name = "diffjpeg"
    version = "2"  # 2: the reference's computation (cached cells of version 1 are not reused)
    differentiable = True
    params = (
        Param(
            "quality",
            int,
            50,
            low=1,
            high=100,
            presets=(10, 30, 50, 70, 90),
            help="JPEG quality factor (libjpeg scale)",
        ),
    )
    quality: int

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return differentiable_jpeg(images, self.quality)


@hookimpl
def iqadef_register_defences(register):
    register(DiffJpeg)
