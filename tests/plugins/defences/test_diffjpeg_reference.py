"""diffjpeg against a reference-style DiffJPEG written here, and its tables against libjpeg (PIL).

The reference is ``DiffJPEGCoding(ste=True)`` in msu-video-group/adversarial-defenses-for-iqa
(metrics/defences/diffjpeg/dfsrc, called from diffjpeg/run.py). The implementation below follows its
structure step by step (channel-last colour einsum, 4-D DCT tensor with tensordot, quality scale through
a hard floor, autograd straight-through functions), independently of iqadef's ``_jpeg_codec``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

ANNEX_K_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)
ANNEX_K_CHROMA = torch.full((8, 8), 99.0)
ANNEX_K_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * (x - torch.round(x)) ** 2 * g


class _Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clip(low, high)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where((x >= ctx.low) & (x <= ctx.high), 1.0, 1e-3) * g, None, None


def _reference_tables(quality: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([float(quality)])
    scale = torch.floor(torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q))
    return tuple(
        torch.floor((t[None] * scale[:, None, None] + 50.0) / 100.0).clip(1, 255)[0]
        for t in (ANNEX_K_LUMA, ANNEX_K_CHROMA)
    )


def _dct_tensor(inverse: bool) -> torch.Tensor:
    i = torch.arange(8, dtype=torch.float32)
    a, b, c, d = torch.meshgrid(i, i, i, i, indexing="ij")
    if inverse:  # [u, v, x, y]: frequency first
        return ((2.0 * c + 1.0) * a * torch.pi / 16.0).cos() * ((2.0 * d + 1.0) * b * torch.pi / 16.0).cos()
    return ((2.0 * a + 1.0) * c * torch.pi / 16.0).cos() * ((2.0 * b + 1.0) * d * torch.pi / 16.0).cos()


def _alpha() -> torch.Tensor:
    alpha = torch.ones(8)
    alpha[0] = 1.0 / 2**0.5
    return torch.outer(alpha, alpha)


def _code(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    b, h, w = plane.shape
    blocks = plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)
    coefficients = 0.25 * _alpha()[None, None] * torch.tensordot(blocks - 128.0, _dct_tensor(False))
    quantised = _Round.apply(coefficients / table) * table
    pixels = 0.25 * torch.tensordot(quantised * _alpha()[None, None], _dct_tensor(True), dims=2) + 128.0
    return pixels.view(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def reference_diffjpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Reference-style DiffJPEG (ste=True) on [0, 1] images, padded and cropped as diffjpeg/run.py does."""
    from kornia.geometry import rescale

    h, w = images.shape[-2:]
    x = F.pad(images, [0, 16 - w % 16, 0, 16 - h % 16], "reflect") * 255
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T
    offset = torch.tensor([0.0, 128.0, 128.0])
    ycbcr = (torch.einsum("...i,ij->...j", x.permute(0, 2, 3, 1), m) + offset).permute(0, 3, 1, 2)
    luma_table, chroma_table = _reference_tables(quality)
    y = _code(ycbcr[:, 0], luma_table)
    chroma = [
        rescale(ycbcr[:, c][None], factor=0.5, interpolation="bilinear", align_corners=False, antialias=True)[0]
        for c in (1, 2)
    ]
    chroma = [
        F.interpolate(_code(c, chroma_table)[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
        for c in chroma
    ]
    stacked = torch.stack((y, *chroma), dim=-1) - offset
    rgb = torch.einsum("...i,ij->...j", stacked, torch.inverse(m)).permute(0, 3, 1, 2)
    return _Clip.apply(rgb, 0, 255)[..., :h, :w] / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    err = float(F.mse_loss(a.double(), b.double()))
    return math.inf if err == 0 else 10 * math.log10(1 / err)


def _photo(height: int, width: int) -> torch.Tensor:
    """A bundled photograph (8-bit values, where rounding ties are common), cropped."""
    from importlib.resources import files

    with Image.open(files("iqadef") / "data" / "images" / "astronaut.png") as image:
        array = np.asarray(image.convert("RGB"))[:height, :width]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float()[None] / 255


@pytest.mark.parametrize("quality", [10, 50, 90])
@pytest.mark.parametrize("height, width", [(37, 45), (48, 64)])
def test_diffjpeg_equals_the_reference_coding(quality, height, width, make_defence, make_images):
    """Forward pass equal to the reference's (kornia's codec was 37-57 dB away: colour offset, soft rounding)."""
    x = torch.cat([make_images(height=height, width=width), _photo(height, width)])
    out = make_defence("diffjpeg", quality=quality).purify(x)
    expected = reference_diffjpeg(x, quality)
    assert out.shape == x.shape
    assert _psnr(out, expected) > 90
    # equal up to float noise nearly everywhere (a tie rounded the other way moves one coefficient)
    assert float(((out - expected).abs() > 1e-5).float().mean()) < 1e-3


@pytest.mark.parametrize("quality", [30, 70])
def test_diffjpeg_gradient_is_the_reference_straight_through_one(quality, make_defence, make_images):
    x = make_images(height=40, width=45)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    ours = x.clone().requires_grad_(True)
    (make_defence("diffjpeg", quality=quality).purify(ours) * weights).sum().backward()
    theirs = x.clone().requires_grad_(True)
    (reference_diffjpeg(theirs, quality) * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("quality", [1, 10, 25, 49, 50, 51, 75, 90, 99, 100])
def test_quantization_tables_are_libjpeg_ones(quality):
    """The scaled tables equal those libjpeg writes into a JPEG file at that quality (read back by PIL)."""
    from iqadef.plugins.defences._jpeg_codec import quantization_tables

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        written = {k: np.asarray(v, dtype=np.float32).reshape(8, 8) for k, v in decoded.quantization.items()}
    luma, chroma = quantization_tables(quality)
    np.testing.assert_array_equal(luma.numpy(), written[0])
    np.testing.assert_array_equal(chroma.numpy(), written[1])


def test_diffjpeg_changes_the_image_about_as_much_as_libjpeg(make_defence):
    x = _photo(64, 64)
    out = make_defence("diffjpeg", quality=50).purify(x)
    pixels = np.rint(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=50)
    real = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())))).permute(2, 0, 1)[None] / 255
    assert abs(_psnr(x, out) - _psnr(x, real)) < 1.5
    assert _psnr(out, real) > _psnr(x, real)
