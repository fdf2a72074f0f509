"""Each classic purifier against an independent computation (numpy, scipy, PIL, or the reference's own ops)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torchvision import transforms


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# --- no-defence ----------------------------------------------------------------------------------
def test_no_defence_returns_its_input(make_defence, images):
    torch.testing.assert_close(make_defence("no-defence").purify(images, seed=1), images, atol=0, rtol=0)


# --- flip -------------------------------------------------------------------------------------
@pytest.mark.parametrize("axes, np_axes", [("hw", (2, 3)), ("h", (2,)), ("w", (3,))])
def test_flip_matches_numpy(axes, np_axes, make_defence, images):
    out = make_defence("flip", axes=axes).purify(images)
    np.testing.assert_array_equal(out.numpy(), np.flip(images.numpy(), axis=np_axes))


# --- colour quantisation ------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 5, 16])
def test_color_quantization_matches_numpy(levels, make_defence, images):
    out = make_defence("color-quantization", levels=levels).purify(images)
    expected = np.round(images.double().numpy() * (levels - 1)) / (levels - 1)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-6)
    assert len(np.unique(out.numpy())) <= levels


# --- median blur: torch 'reflect' (edge not repeated) is scipy's 'mirror' ----------------------------
@pytest.mark.parametrize("k", [3, 5])
def test_median_blur_matches_scipy_mirror(k, make_defence, images):
    out = make_defence("median-blur", kernel_size=k).purify(images)
    expected = ndimage.median_filter(images.numpy(), size=(1, 1, k, k), mode="mirror")
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-7)


def test_median_blur_border_is_not_zero_padded(make_defence):
    ones = torch.ones(1, 3, 16, 16)
    out = make_defence("median-blur", kernel_size=5).purify(ones)
    torch.testing.assert_close(out, ones)


# --- Gaussian blur: kernel from OpenCV's sigma rule, reflect border ----------------------------------
def _gaussian_kernel_2d(k: int, sigma: float) -> np.ndarray:
    offsets = np.arange(k) - (k - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_gaussian_blur_matches_kernel_with_opencv_sigma(k, make_defence, images):
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    out = make_defence("gaussian-blur", kernel_size=k).purify(images)
    kernel = _gaussian_kernel_2d(k, sigma)[None, None]
    expected = ndimage.correlate(_np(images), kernel, mode="mirror")
    np.testing.assert_allclose(out.double().numpy(), np.clip(expected, 0, 1), atol=1e-5)


def test_gaussian_blur_explicit_sigma(make_defence, images):
    out = make_defence("gaussian-blur", kernel_size=5, sigma=2.0).purify(images)
    expected = ndimage.correlate(_np(images), _gaussian_kernel_2d(5, 2.0)[None, None], mode="mirror")
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-5)


# --- unsharp mask -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k, sigma, amount", [(5, 1.0, 1.0), (3, 0.8, 2.0)])
def test_unsharp_matches_scipy(k, sigma, amount, make_defence, images):
    out = make_defence("unsharp", kernel_size=k, sigma=sigma, amount=amount).purify(images)
    x = _np(images)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), radius=(0, 0, k // 2, k // 2), mode="mirror")
    expected = np.clip(x + amount * (x - blurred), 0, 1)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-5)


# --- JPEG -------------------------------------------------------------------------------------------
def _pil_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    decoded = np.array(Image.open(io.BytesIO(buffer.getvalue())))
    return torch.from_numpy(decoded).permute(2, 0, 1).float() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.double(), b.double())))


def _reference_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """metrics/defences/jpeg/run.py: ``decode_jpeg(encode_jpeg((img * 255).type(torch.uint8), q)) / 255``."""
    import warnings

    from torchvision.io import decode_jpeg, encode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's codec is deprecated, which is why iqadef uses PIL
        coded = [decode_jpeg(encode_jpeg((image * 255).type(torch.uint8), quality)) for image in images]
    return torch.stack(coded).float() / 255


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_equals_the_reference_codec_on_float_input(quality, make_defence, make_images):
    """Float pixels are truncated to 8 bits as the reference does (rounding them was 36-46 dB away)."""
    x = make_images(height=37, width=45)
    out = make_defence("jpeg", quality=quality).purify(x)
    torch.testing.assert_close(out, _reference_jpeg(x, quality), atol=0, rtol=0)


def test_jpeg_stronger_compression_changes_more(make_defence, images):
    psnrs = [_psnr(images, make_defence("jpeg", quality=q).purify(images)) for q in (10, 50, 90)]
    assert psnrs[0] < psnrs[1] < psnrs[2]


def test_jpeg_bpda_gradient_is_that_of_the_differentiable_codec(make_defence, images):
    x = images.clone().requires_grad_(True)
    d = make_defence("jpeg")
    d.forward(x).sum().backward()
    y = images.clone().requires_grad_(True)
    make_defence("diffjpeg").purify(y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


# --- differentiable JPEG --------------------------------------------------------------------------------
@pytest.mark.parametrize("quality", [30, 50, 90])
def test_diffjpeg_is_close_to_real_jpeg(quality, make_defence, make_images):
    x = make_images(height=37, width=45)
    out = make_defence("diffjpeg", quality=quality).purify(x)
    real = torch.stack([_pil_jpeg(image, quality) for image in x])
    assert out.shape == x.shape
    # both change the image by roughly the same amount, and agree with each other far better than with x
    assert _psnr(out, real) > _psnr(x, real) + 3
    assert abs(_psnr(x, out) - _psnr(x, real)) < 3


def test_diffjpeg_size_multiple_of_16_unchanged(make_defence, make_images):
    x = make_images(height=32, width=48)
    assert make_defence("diffjpeg").purify(x).shape == x.shape


# --- resize / upscale: the reference's torchvision 0.15 pipeline (tensors resized without antialiasing) -------
def _resize_tv015(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``transforms.Resize(size)(tensor)`` in torchvision 0.15: bilinear, align_corners False, no antialias."""
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("scale", [0.25, 0.5, 0.9])
def test_resize_matches_reference_pipeline(scale, make_defence, images):
    out = make_defence("resize", scale=scale).purify(images)
    h, w = images.shape[-2:]
    assert out.shape[-2:] == (int(h * scale), int(w * scale))
    torch.testing.assert_close(out, _resize_tv015(images, (int(h * scale), int(w * scale))))


@pytest.mark.parametrize("scale", [0.25, 0.5])
def test_upscale_matches_reference_pipeline_and_keeps_size(scale, make_defence, images):
    out = make_defence("upscale", scale=scale).purify(images)
    h, w = images.shape[-2:]
    assert out.shape == images.shape
    small = _resize_tv015(images, (int(h * scale), int(w * scale)))
    expected = torch.nn.Upsample(size=(h, w), mode="bilinear")(small)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["resize", "upscale"])
def test_antialias_option_is_torchvisions_antialiased_resize(name, make_defence, images):
    out = make_defence(name, scale=0.25, antialias=True).purify(images)
    h, w = images.shape[-2:]
    small = transforms.Resize((h // 4, w // 4), antialias=True)(images)
    expected = small if name == "resize" else torch.nn.Upsample(size=(h, w), mode="bilinear")(small)
    torch.testing.assert_close(out, expected.clamp(0, 1))
    assert float((out - make_defence(name, scale=0.25).purify(images)).abs().max()) > 0.01


def test_upscale_keeps_a_constant_image(make_defence):
    x = torch.full((1, 3, 33, 47), 0.4)
    torch.testing.assert_close(make_defence("upscale", scale=0.25).purify(x), x)


# --- random rotate --------------------------------------------------------------------------------------
def test_rotate_applies_the_same_turn_to_both_images_of_a_pair(make_defence, make_images):
    clean = make_images(batch=3, low=0.1, high=0.9, seed=1)
    attacked = 1.0 - clean  # a very different image; nearest rotation is a pure gather
    d = make_defence("random-rotate", angle_limit=30)
    a, b = d.purify(clean, seed=9), d.purify(attacked, seed=9)
    filled = a == 0
    assert filled.any()  # corners are filled with black (the reference's fill)
    torch.testing.assert_close(filled, b == 0)
    torch.testing.assert_close((a + b)[~filled], torch.ones_like(a)[~filled])


def test_rotate_angle_stays_within_the_limit(make_defence):
    ones = torch.ones(8, 3, 48, 48)
    import torchvision.transforms.v2.functional as TF

    limit_fill = float((TF.rotate(ones[0], 10.0) == 0).float().mean())
    out = make_defence("random-rotate", angle_limit=10).purify(ones, seed=4)
    per_image_fill = (out == 0).float().mean(dim=(1, 2, 3))
    assert float(per_image_fill.max()) <= limit_fill + 1e-6
    assert float(per_image_fill.max()) > 0


def test_rotate_zero_limit_is_identity(make_defence, images):
    torch.testing.assert_close(make_defence("random-rotate", angle_limit=0).purify(images, seed=3), images)


def test_rotate_limit_is_whole_degrees_as_the_reference_casts_it(make_defence):
    """The reference runs ``RandomRotation(int(angle_limit))``: a fractional limit is refused, not truncated."""
    from iqadef.core.errors import ConfigError

    with pytest.raises(ConfigError, match="angle_limit"):
        make_defence("random-rotate", angle_limit=12.5)
    assert make_defence("random-rotate", angle_limit=12.0).angle_limit == 12


# --- random crop ------------------------------------------------------------------------------------------
def _find_window(image: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    ch, cw = crop.shape[-2:]
    h, w = image.shape[-2:]
    return [
        (i, j)
        for i in range(h - ch + 1)
        for j in range(w - cw + 1)
        if np.array_equal(image[:, i : i + ch, j : j + cw], crop)
    ]


def test_crop_is_a_window_of_the_image_and_pairs_match(make_defence, make_images):
    clean = make_images(batch=2, seed=2)
    attacked = 1.0 - clean
    d = make_defence("random-crop", size=20)
    a, b = d.purify(clean, seed=7), d.purify(attacked, seed=7)
    assert a.shape == (2, 3, 20, 20)
    for i in range(2):
        where_a = _find_window(clean[i].numpy(), a[i].numpy())
        where_b = _find_window(attacked[i].numpy(), b[i].numpy())
        assert where_a and where_a == where_b


def test_crop_larger_than_image_keeps_that_side(make_defence, make_images):
    x = make_images(height=24, width=40)
    out = make_defence("random-crop", size=32).purify(x, seed=1)
    assert out.shape[-2:] == (24, 32)
    assert _find_window(x[0].numpy(), out[0].numpy())


# --- random noise ------------------------------------------------------------------------------------------
def test_noise_is_the_same_for_a_pair_and_has_the_right_size(make_defence, make_images):
    clean = make_images(batch=2, height=64, width=64, low=0.3, high=0.7)
    attacked = make_images(batch=2, height=64, width=64, low=0.3, high=0.7, seed=5)
    d = make_defence("random-noise", sigma=0.02)
    noise_a = d.purify(clean, seed=3) - clean
    noise_b = d.purify(attacked, seed=3) - attacked
    torch.testing.assert_close(noise_a, noise_b, atol=1e-6, rtol=0)
    assert math.isclose(float(noise_a.std()), 0.02, rel_tol=0.1)
    assert abs(float(noise_a.mean())) < 0.002


def test_noise_is_clipped(make_defence):
    x = torch.ones(1, 3, 16, 16)
    out = make_defence("random-noise", sigma=0.1).purify(x, seed=0)
    assert float(out.max()) == 1.0 and float(out.min()) < 1.0


# --- non-default options ----------------------------------------------------------------------------------
def test_rotate_bilinear_option_keeps_pairs_aligned(make_defence, make_images):
    clean = make_images(low=0.1, high=0.9)
    d = make_defence("random-rotate", angle_limit=20, interpolation="bilinear")
    a, b = d.purify(clean, seed=1), d.purify(1.0 - clean, seed=1)
    # bilinear with a zero fill is linear in the image: rot(x) + rot(1 - x) = rot(1)
    ones = d.purify(torch.ones_like(clean), seed=1)
    torch.testing.assert_close(a + b, ones, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["bicubic", "nearest"])
def test_upscale_other_modes(mode, make_defence, images):
    out = make_defence("upscale", scale=0.5, mode=mode).purify(images)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert _psnr(images, out) > 15
