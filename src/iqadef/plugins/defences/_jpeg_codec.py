"""Differentiable JPEG coding as the reference runs it: Reich et al.'s DiffJPEG with ``ste=True``.

Reference: msu-video-group/adversarial-defenses-for-iqa, ``metrics/defences/diffjpeg/dfsrc`` (``color.py``,
``encode.py``, ``decode.py``, ``utils.py``, ``rounding.py``, ``clipping.py``) and ``diffjpeg/run.py``.
Written here because kornia's ``jpeg_codec_differentiable`` differs from it in the forward pass: kornia
converts colour with Cb/Cr factors 0.564/0.713 and offset 127.5 (the reference: the JFIF matrix, offset 128)
and floors the quality scale with a polynomial (quality 50 gives 99.875 instead of 100), which puts the two
37-56 dB PSNR apart. What this module computes, on pixel values in [0, 255]:

* RGB -> YCbCr with the JFIF (ITU-R BT.601 full-range) matrix, offset (0, 128, 128);
* 4:2:0 chroma: kornia ``rescale(0.5, bilinear, antialias=True)`` down, bilinear x2 up (as the reference);
* 8x8 orthonormal DCT of ``block - 128``; libjpeg (IJG) quality scaling of the Annex K tables,
  ``floor((Q * scale + 50) / 100)`` clipped to [1, 255] with ``scale = floor(5000 / q)`` below 50, else
  ``200 - 2q``;
* straight-through rounding of the quantised coefficients: ``round`` forward, gradient
  ``3 (x - round(x))^2`` backward (the derivative of the reference's soft rounding), and a clip to [0, 255]
  with gradient 1 inside, 1e-3 outside.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

#: JFIF RGB -> YCbCr matrix (rows Y, Cb, Cr) and offsets, for 8-bit values.
JFIF_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
JFIF_OFFSET = (0.0, 128.0, 128.0)

#: JPEG standard (ITU-T T.81 Annex K) luminance and chrominance tables, quality 50, row-major.
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

#: Gradient factor of the straight-through clip outside its bounds (the reference's ``scale``).
CLIP_OUTSIDE_GRADIENT = 1e-3


class _RoundSTE(torch.autograd.Function):
    """``round`` forward; ``3 (x - round x)^2`` backward (the reference's ``differentiable_rounding_ste``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3.0 * (x - torch.round(x)).square() * grad


class _ClampSTE(torch.autograd.Function):
    """``clamp`` forward; gradient 1 inside the bounds and 1e-3 outside (``differentiable_clipping_ste``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        low, high = ctx.bounds
        inside = (x >= low) & (x <= high)
        return torch.where(inside, grad, grad * CLIP_OUTSIDE_GRADIENT), None, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def clamp_ste(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return _ClampSTE.apply(x, low, high)


def quality_scale(quality: int) -> int:
    """libjpeg's percentage scale of the Annex K tables for a quality factor (``jpeg_quality_scaling``)."""
    return math.floor(5000 / quality) if quality < 50 else 200 - 2 * quality


def quantization_tables(
    quality: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled luminance and chrominance tables, ``floor((Q * scale + 50) / 100)`` clipped to [1, 255]."""
    scale = quality_scale(quality)
    tables = torch.tensor((LUMA_TABLE, CHROMA_TABLE), dtype=torch.float64)
    tables = torch.floor((tables * scale + 50.0) / 100.0).clamp(1.0, 255.0)
    return tables[0].to(dtype=dtype, device=device), tables[1].to(dtype=dtype, device=device)


def dct_basis(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Unscaled 2-D DCT basis as a 64x64 matrix: ``[(x, y), (u, v)] = cos((2x+1)u pi/16) cos((2y+1)v pi/16)``.

    Built in the working dtype and applied as one matmul over the 64 pixels of a block, with the
    normalisation applied separately (see :func:`dct_norm`): the reference computes its DCT in this order,
    and the same order gives bit-identical float32 coefficients, so no quantised value lands on the other
    side of a rounding tie.
    """
    k = torch.arange(8, dtype=dtype, device=device)
    cosines = torch.cos((2.0 * k[:, None] + 1.0) * k[None, :] * math.pi / 16.0)  # [pixel, frequency]
    return (cosines[:, None, :, None] * cosines[None, :, None, :]).reshape(64, 64)


def dct_norm(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """``alpha_u alpha_v`` with ``alpha_0 = 1/sqrt(2)``, else 1: with the factor 1/4 it makes the DCT orthonormal."""
    alpha = torch.ones(8, dtype=dtype, device=device)
    alpha[0] = 1.0 / math.sqrt(2.0)
    return torch.outer(alpha, alpha)


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [B, H/8 * W/8, 8, 8], blocks in raster order."""
    b, h, w = plane.shape
    return plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(b, -1, 8, 8)


def _from_blocks(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b = blocks.shape[0]
    return blocks.reshape(b, height // 8, width // 8, 8, 8).transpose(2, 3).reshape(b, height, width)


def _code_plane(plane: torch.Tensor, table: torch.Tensor, basis: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """DCT, quantise (straight-through rounding), dequantise and inverse DCT of one [B, H, W] plane."""
    blocks = _to_blocks(plane - 128.0)
    shape = blocks.shape
    coefficients = 0.25 * norm * (blocks.reshape(*shape[:2], 64) @ basis).reshape(shape)
    restored = round_ste(coefficients / table) * table
    pixels = 0.25 * ((restored * norm).reshape(*shape[:2], 64) @ basis.T).reshape(shape) + 128.0
    return _from_blocks(pixels, *plane.shape[-2:])


def diff_jpeg_255(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-code ``[B, 3, H, W]`` RGB values in [0, 255] (H, W multiples of 16); result in [0, 255]."""
    from kornia.geometry import rescale

    dtype, device = pixels.dtype, pixels.device
    height, width = pixels.shape[-2:]
    if height % 16 or width % 16:
        raise ValueError(f"diff_jpeg_255 needs sides that are multiples of 16, got {height}x{width}")
    matrix = torch.tensor(JFIF_RGB_TO_YCBCR, dtype=torch.float64)
    offset = torch.tensor(JFIF_OFFSET, dtype=dtype, device=device)[:, None, None]
    ycbcr = torch.einsum("ij,bjhw->bihw", matrix.to(dtype=dtype, device=device), pixels) + offset
    luma_table, chroma_table = quantization_tables(quality, dtype, device)
    basis, norm = dct_basis(dtype, device), dct_norm(dtype, device)

    y = _code_plane(ycbcr[:, 0], luma_table, basis, norm)
    chroma = rescale(ycbcr[:, 1:], 0.5, interpolation="bilinear", align_corners=False, antialias=True)
    cb = _code_plane(chroma[:, 0], chroma_table, basis, norm)
    cr = _code_plane(chroma[:, 1], chroma_table, basis, norm)
    chroma = F.interpolate(torch.stack((cb, cr), dim=1), scale_factor=2, mode="bilinear", align_corners=False)

    # the inverse of the working-precision matrix (as the reference inverts it), not a float64 one
    inverse = torch.linalg.inv(matrix.to(dtype=dtype, device=device).T).T
    decoded = torch.cat((y[:, None], chroma), dim=1) - offset
    rgb = torch.einsum("ij,bjhw->bihw", inverse, decoded)
    return clamp_ste(rgb, 0.0, 255.0)
