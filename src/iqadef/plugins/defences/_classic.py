"""Shared helpers for the classic (non-neural) purifiers: padding, blur kernels, per-image randomness."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iqadef import ConfigError

from ._jpeg_codec import diff_jpeg_255

#: Kernel sizes the reference sweeps for its blur defences.
KERNEL_PRESETS = (3, 5, 7, 9, 11)


def opencv_sigma(kernel_size: int) -> float:
    """The sigma OpenCV derives from a kernel size when none is given (the reference uses it for Gaussian blur)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's ``GaussianBlur``, as the reference uses)."""
    import torchvision.transforms.v2.functional as TF  # lazily: torchvision's import costs ~2 s at every CLI start

    return TF.gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])


def pad_reflect(images: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding (edge pixel not repeated); falls back to replicate where the image is too small to reflect."""
    height, width = images.shape[-2:]
    mode = "reflect" if max(top, bottom) < height and max(left, right) < width else "replicate"
    return F.pad(images, (left, right, top, bottom), mode=mode)


def scaled_size(images: torch.Tensor, scale: float) -> list[int]:
    """``int(side * scale)`` for both sides, as the reference computes it (at least 1 pixel)."""
    height, width = images.shape[-2:]
    return [max(1, int(height * scale)), max(1, int(width * scale))]


def resize(images: torch.Tensor, size: list[int], antialias: bool = False) -> torch.Tensor:
    """Bilinear tensor resize; by default without antialiasing, as ``transforms.Resize`` did in the reference.

    The reference environment (torch 1.13, torchvision 0.15) resized tensors with ``antialias=None``, which
    meant no antialiasing for tensors; torchvision 0.17+ antialiases by default. ``antialias=True`` low-pass
    filters before shrinking (the newer default, and what PIL does).
    """
    import torchvision.transforms.v2.functional as TF  # lazily: torchvision's import costs ~2 s at every CLI start

    return TF.resize(images, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=antialias)


def uniform_per_image(generator: torch.Generator, images: torch.Tensor, low: float, high: float) -> list[float]:
    """One uniform draw per image; depends only on the generator's seed and the batch size."""
    u = torch.rand(images.shape[0], generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).tolist()


def randint_per_image(generator: torch.Generator, images: torch.Tensor, high: int) -> list[int]:
    """One integer in ``[0, high)`` per image; depends only on the generator's seed and the batch size."""
    return torch.randint(0, high, (images.shape[0],), generator=generator, device=generator.device).tolist()


def reference_jpeg_padding(height: int, width: int) -> tuple[int, int]:
    """Bottom and right padding of the reference's DiffJPEG: ``16 - side % 16`` (a whole block on a multiple of 16).

    msu-video-group/adversarial-defenses-for-iqa ``metrics/defences/diffjpeg/run.py`` pads this way; the extra
    block matters at the image's right and bottom edges, where chroma resampling reads the padded pixels.
    """
    return 16 - height % 16, 16 - width % 16


def differentiable_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """The reference's DiffJPEG (``DiffJPEGCoding(ste=True)``) on images in [0, 1], reflect-padded as it pads.

    Hard rounding forward, the reference's surrogate gradient backward (see ``_jpeg_codec``); the result is
    cropped back to the input size and lies in [0, 1].
    """
    height, width = images.shape[-2:]
    bottom, right = reference_jpeg_padding(height, width)
    padded = pad_reflect(images, 0, right, 0, bottom)
    return diff_jpeg_255(padded * 255.0, quality)[..., :height, :width] / 255.0


def require_odd_kernel(plugin, where: str | None = None) -> None:
    """Refuse an even ``kernel_size`` with a ConfigError naming the key (blur windows need a centre pixel)."""
    if plugin.kernel_size % 2 == 0:
        place = where or plugin.name
        raise ConfigError(
            f"{place}.kernel_size: {plugin.kernel_size} is even; use an odd size such as {plugin.kernel_size + 1}"
        )
