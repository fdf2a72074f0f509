"""JPEG purifier: lossy compression drops the small high-frequency changes most attacks make."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from iqadef import Defence, Param, hookimpl

from ._classic import differentiable_jpeg


class Jpeg(Defence):
    """JPEG: compress and decompress each image with libjpeg at a given quality (real codec, 4:2:0).

    Reference: torchvision ``encode_jpeg``/``decode_jpeg`` in msu-video-group/adversarial-defenses-for-iqa
    (metrics/defences/jpeg/run.py). Here PIL does the round trip (same libjpeg-turbo, same 4:2:0 subsampling,
    identical output; torchvision's codec is deprecated). Pixels are truncated to 8 bits before encoding, as the
    reference's ``(img * 255).type(torch.uint8)`` does. Not differentiable: adaptive attacks (BPDA) get the
    gradient of the differentiable JPEG (the ``diffjpeg`` defence) instead.
    """

    name = "jpeg"
    version = "2"  # 2: the reference's computation (cached cells of version 1 are not reused)
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
        # truncation, not rounding: the reference casts x * 255 to uint8
        pixels = (images.detach().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        decoded = np.stack([self._round_trip(image) for image in pixels])
        out = torch.from_numpy(decoded).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype)
        return out / 255.0

    def _round_trip(self, pixels: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"))

    def estimate_forward(self, images: torch.Tensor) -> torch.Tensor:
        """BPDA's stand-in: the reference's differentiable JPEG (same tables, straight-through rounding)."""
        return differentiable_jpeg(images, self.quality)


@hookimpl
def iqadef_register_defences(register):
    register(Jpeg)
