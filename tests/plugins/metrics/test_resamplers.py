"""The original repositories' resamplers, rebuilt in torch, against the libraries themselves:
``skimage_resize`` against ``skimage.transform.resize`` (MetaIQA's ``Rescale``), ``pil_bilinear_resize``
against ``PIL.Image.resize(..., BILINEAR)`` on 8-bit images (LinearityIQA's and SPAQ's loaders), on random
and natural images, odd sizes, shrinking, enlarging and both at once; plus their gradients."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from skimage.transform import resize as skimage_reference

from iqadef.plugins.metrics._official import (
    pil_bilinear_resize,
    quantize_8bit,
    resize,
    shorter_side_size,
    skimage_resize,
)

SIZES = [  # (H, W) in -> (H, W) out
    ((37, 53), (20, 31)),  # shrink, odd sizes
    ((17, 13), (40, 29)),  # enlarge
    ((61, 47), (23, 80)),  # shrink one side, enlarge the other
    ((40, 56), (40, 23)),  # one side only
    ((41, 9), (12, 9)),  # the other side only
    ((10, 10), (1, 1)),  # the Gaussian reaches past the image several times (mirror boundary)
    ((1, 7), (3, 2)),  # a one-pixel side
    ((300, 451), (224, 224)),  # MetaIQA's test size from an image of natural size
]


def random_uint8(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def natural_uint8() -> list[np.ndarray]:
    """Photographs shipped with scikit-image (no download)."""
    return [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]


def as_batch(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] in [0, 1], as ``to_tensor`` or skimage's ``img_as_float``."""
    return torch.from_numpy(array.astype(np.float64) / 255).permute(2, 0, 1)[None].to(dtype)


def as_levels(batch: torch.Tensor) -> np.ndarray:
    return (batch[0].permute(1, 2, 0).detach().double() * 255).round().numpy().astype(np.int64)


def pil_horizontal_then_vertical(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's two passes, one call per side: what ``Image.resize`` computes in every Pillow before 13 (the
    originals ran Pillow 6-7); Pillow 13 sometimes runs the vertical pass first (python-pillow/Pillow#9549)."""
    out_h, out_w = size
    image = Image.fromarray(array)
    if image.width != out_w:
        image = image.resize((out_w, image.height), Image.BILINEAR)
    if image.height != out_h:
        image = image.resize((out_w, out_h), Image.BILINEAR)
    return np.asarray(image).astype(np.int64)


# -- scikit-image ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size_in", "size_out"), SIZES)
def test_skimage_resize_matches_scikit_image_on_random_images(size_in, size_out):
    array = random_uint8(*size_in, seed=sum(size_in))
    expected = skimage_reference(array, size_out)  # uint8 in, as MetaIQA passes it
    for dtype, tolerance in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        ours = skimage_resize(as_batch(array, dtype), size_out)[0].permute(1, 2, 0).double().numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() < tolerance


@pytest.mark.parametrize("size_out", [(224, 224), (128, 301), (600, 700)])
def test_skimage_resize_matches_scikit_image_on_photographs(size_out):
    for array in natural_uint8():
        ours = skimage_resize(as_batch(array), size_out)[0].permute(1, 2, 0).double().numpy()
        assert np.abs(ours - skimage_reference(array, size_out)).max() < 1e-5


def test_skimage_resize_is_not_torch_bilinear():
    """What iqadef did before: torch's antialiased bilinear is a different filter (not a rounding error)."""
    x = as_batch(skimage.data.chelsea())
    gap = (skimage_resize(x, (224, 224)) - resize(x, [224, 224])).abs().max()
    assert gap > 0.05


def test_skimage_resize_gradient_is_the_transposed_operator():
    x = torch.rand(1, 3, 13, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: skimage_resize(t, (5, 17)), (x,))


def test_skimage_resize_treats_each_image_of_a_batch_alone():
    arrays = [random_uint8(29, 31, seed) for seed in range(3)]
    batch = torch.cat([as_batch(a) for a in arrays])
    out = skimage_resize(batch, (11, 40))
    for i, array in enumerate(arrays):
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), skimage_reference(array, (11, 40)), atol=1e-5)


# -- PIL -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size_in", "size_out"), SIZES + [((768, 1024), (498, 664)), ((512, 512), (498, 664))])
def test_pil_bilinear_resize_is_pil_bit_for_bit(size_in, size_out):
    for seed in range(3):
        array = random_uint8(*size_in, seed=seed)
        ours = as_levels(pil_bilinear_resize(as_batch(array), size_out))
        assert np.array_equal(ours, pil_horizontal_then_vertical(array, size_out))


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((300, 451), (498, 664)), ((400, 600), (498, 664)), ((512, 512), (224, 224)), ((300, 451), (40, 23))],
)
def test_pil_bilinear_resize_equals_image_resize_on_photographs(size_in, size_out):
    """``Image.resize`` itself (every Pillow agrees on these: both sides shrink or grow alike)."""
    for array in natural_uint8():
        array = np.ascontiguousarray(array[: size_in[0], : size_in[1]])
        expected = np.asarray(Image.fromarray(array).resize(size_out[::-1], Image.BILINEAR)).astype(np.int64)
        assert np.array_equal(as_levels(pil_bilinear_resize(as_batch(array), size_out)), expected)


def test_pil_bilinear_resize_as_torchvision_calls_it():
    """``torchvision.transforms.functional.resize`` on a PIL image (LinearityIQA's test_demo.py, SPAQ's
    ``Resize(512)``) is ``Image.resize(BILINEAR)``; the shorter-side size is torchvision's."""
    array = skimage.data.coffee()  # 400 x 600
    image = Image.fromarray(array)
    for size, ours in [((498, 664), (498, 664)), (512, shorter_side_size(400, 600, 512))]:
        expected = np.asarray(TF.resize(image, size if isinstance(size, tuple) else [size])).astype(np.int64)
        assert np.array_equal(as_levels(pil_bilinear_resize(as_batch(array), ours)), expected)
    for height, width in [(600, 800), (800, 600), (512, 512), (513, 9000), (4000, 3000)]:
        expected = TF.resize(Image.new("RGB", (width, height)), [512]).size[::-1]
        assert shorter_side_size(height, width, 512) == expected


def test_pil_bilinear_resize_keeps_the_size_unchanged():
    x = as_batch(random_uint8(9, 7, seed=0))
    assert pil_bilinear_resize(x, (9, 7)) is x  # PIL returns a copy


def pil_float_resize(x: torch.Tensor, size) -> torch.Tensor:
    """PIL's mode 'F' resize (float32 planes: the same normalised weights, no fixed point, no rounding)."""
    out_h, out_w = size
    planes = [
        np.asarray(Image.fromarray(x[0, c].numpy().astype(np.float32)).resize((out_w, out_h), Image.BILINEAR))
        for c in range(x.shape[1])
    ]
    return torch.from_numpy(np.stack(planes)).double()[None]


def test_pil_bilinear_resize_rounds_after_each_pass():
    """Float weights and one rounding at the end is not PIL: the 8-bit intermediate image matters."""
    x = as_batch(random_uint8(61, 47, seed=4), torch.float64)
    rounded_once = (pil_float_resize(x, (23, 80))[0].permute(1, 2, 0) * 255).round().numpy().astype(np.int64)
    ours = as_levels(pil_bilinear_resize(x, (23, 80)))
    assert not np.array_equal(ours, rounded_once)
    assert np.abs(ours - rounded_once).max() == 1


@pytest.mark.parametrize(("size_in", "size_out"), [((61, 47), (23, 80)), ((20, 30), (41, 17)), ((33, 33), (10, 10))])
def test_pil_bilinear_resize_gradient_is_pil_float_resize(size_in, size_out):
    """Straight-through: the gradient is that of PIL's own weights without rounding (PIL's mode 'F'
    result, a linear map L; so <w, L x> has gradient L^T w, checked against PIL's 'F' output)."""
    x = as_batch(random_uint8(*size_in, seed=1), torch.float64).requires_grad_(True)
    weights = torch.randn(1, 3, *size_out, dtype=torch.float64)
    (pil_bilinear_resize(x, size_out) * weights).sum().backward()
    probe = torch.rand_like(x)  # <L^T w, p> = <w, L p>
    through_pil = (pil_float_resize(probe, size_out) * weights).sum()
    torch.testing.assert_close((x.grad * probe).sum(), through_pil, rtol=1e-5, atol=1e-5)


def test_quantize_8bit_rounds_to_levels_and_passes_the_gradient_straight_through():
    x = torch.tensor([0.0, 0.3 / 255, 0.6 / 255, 127.49 / 255, 1.0, 1.2], requires_grad=True)
    q = quantize_8bit(x)
    torch.testing.assert_close(q.detach() * 255, torch.tensor([0.0, 0.0, 1.0, 127.0, 255.0, 255.0]))
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
