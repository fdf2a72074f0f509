"""Shared plumbing for metrics rebuilt from their authors' code so that the official checkpoints load as-is.

* preprocessing pieces that stay differentiable and treat every image of a batch on its own: ImageNet
  normalisation; :func:`resize`, iqadef's own quick resize (torch's antialiased bilinear, no original
  uses it); and the original repositories' resamplers, rebuilt exactly: :func:`skimage_resize`
  (``skimage.transform.resize``, MetaIQA) and :func:`pil_bilinear_resize` (PIL's 8-bit ``BILINEAR``,
  LinearityIQA and SPAQ) with :func:`quantize_8bit` (the 8-bit image those pipelines start from);
* :func:`state_from_checkpoint`: pick the state dict out of an official checkpoint, drop a DataParallel
  ``module.`` prefix, cast half-precision tensors to float32;
* :func:`build_from_state`: build the network on the ``meta`` device (no memory, no random init; the
  ResNeXt-101 of LinearityIQA takes seconds to initialise on a small CPU) and fill it with the checkpoint's
  tensors, strictly: a missing, unexpected or wrongly shaped key is a :class:`WeightsError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from iqadef import Param, WeightsError, load_state_dict_strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: torch.Tensor, metric: str) -> None:
    """Refuse anything but an RGB batch ``[B, 3, H, W]`` with a message that says what came in."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{metric} expects RGB images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")


def ready_input(metric, images: torch.Tensor) -> torch.Tensor:
    """Check the batch, load the metric where the images are if nobody called ``load()``, return float32."""
    check_images(images, metric.name)
    if metric._loaded_on is None:
        metric.load(images.device)
    return images.float()


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with the ImageNet statistics the torchvision backbones were trained with."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def resize(images: torch.Tensor, size: Sequence[int] | int) -> torch.Tensor:
    """Torch's bilinear, antialiased resize, differentiable: iqadef's quick resize for an explicit
    ``resize`` under ``preprocess: msu``. It is close to, but not, PIL's BILINEAR (no 8-bit passes) and
    far from skimage's Gaussian + linear resize; ``preprocess: official`` uses those instead.

    ``size`` is ``(H, W)``, or one int for the shorter side (aspect ratio kept, as ``transforms.Resize``).
    """
    import torchvision.transforms.v2.functional as TF  # lazily: torchvision's import costs ~2 s at every CLI start

    size = [int(size)] if isinstance(size, int) else [int(s) for s in size]
    if len(size) == 2 and tuple(images.shape[-2:]) == tuple(size):
        return images
    return TF.resize(images, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side brought to ``side``, the longer one truncated as torchvision's
    ``Resize(int)`` computes it (``int(side * long / short)``; a square stays square)."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def preprocess_param(official: str) -> Param:
    """The ``preprocess`` switch shared by the three official metrics; ``official`` describes the original
    repository's pipeline in a few words for ``iqadef list``."""
    return Param(
        "preprocess",
        str,
        "msu",
        choices=("msu", "official"),
        help=(
            "msu: the image at its own size, as the study's MSU wrappers feed it "
            "(adversarial-defenses-for-iqa, metrics/subjects/*); official: the original "
            f"repository's test pipeline, reproduced exactly ({official})"
        ),
    )


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """The image rounded to the nearest of 256 levels, as the 8-bit picture the original pipelines load;
    straight-through gradient (identity), so attacks still see one."""
    levels = (images.detach().clamp(0, 1) * 255).round() / 255
    return images + (levels - images.detach())


# -- scikit-image's resize (MetaIQA's ``Rescale``) -----------------------------------------------------


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    """scipy.ndimage's ``mirror`` boundary (skimage's ``mode='reflect'``): ``d c b | a b c d | c b a``,
    repeated with period ``2 (n - 1)`` so any offset lands inside."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    index = np.mod(index, period)
    return np.where(index > length - 1, period - index, index)


@lru_cache(maxsize=64)
def _skimage_axis(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float64 matrix of ``skimage.transform.resize`` along one axis (defaults: order 1,
    ``mode='reflect'``, anti-aliasing when shrinking): ``scipy.ndimage.gaussian_filter`` with
    ``sigma = (n_in / n_out - 1) / 2``, ``truncate=4.0``, mirror boundary, then ``scipy.ndimage.zoom``
    (``order=1``, ``grid_mode=True``: sample at ``(i + 0.5) * n_in / n_out - 0.5``, mirror boundary)."""
    factor = n_in / n_out
    rows = np.arange(n_in)
    blur = np.eye(n_in)
    sigma = max(0.0, (factor - 1) / 2)
    if sigma > 1e-15:  # gaussian_filter skips such axes
        radius = int(4.0 * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1)
        weights = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64) ** 2)
        weights /= weights.sum()
        blur = np.zeros((n_in, n_in))
        taps = _mirror(rows[:, None] + offsets[None, :], n_in)
        np.add.at(blur, (np.repeat(rows, offsets.size), taps.ravel()), np.tile(weights, n_in))
    coords = (np.arange(n_out) + 0.5) * factor - 0.5
    if n_in == 1:
        coords = np.zeros_like(coords)
    else:
        period = 2.0 * (n_in - 1)
        coords = np.mod(coords, period)
        coords = np.where(coords > n_in - 1, period - coords, coords)
    low = np.minimum(np.floor(coords).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = coords - low
    zoom = np.zeros((n_out, n_in))
    np.add.at(zoom, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(zoom, (np.arange(n_out), high), frac)
    return zoom @ blur


@lru_cache(maxsize=128)
def _on_device(
    build: Callable, n_in: int, n_out: int, part: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``build(n_in, n_out)`` (or its ``part``-th matrix) as a tensor on ``device``, kept for the next call
    (an attack scores the same size many times)."""
    matrix = build(n_in, n_out) if part is None else build(n_in, n_out)[part]
    return torch.from_numpy(matrix).to(device=device, dtype=dtype)


def _axis(build: Callable, n_in: int, n_out: int, like: torch.Tensor, part: int | None = None) -> torch.Tensor:
    return _on_device(build, n_in, n_out, part, like.device, like.dtype)


def skimage_resize(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``skimage.transform.resize(image, size)`` with its defaults, for ``[B, C, H, W]`` float images
    (as skimage sees a uint8 image after ``img_as_float``), differentiable: per axis one linear map
    (:func:`_skimage_axis`), applied as two matrix products. skimage's ``clip`` is a no-op here (order 1
    and Gaussian weights are convex). MetaIQA_FineTune_WILDLIVE.py ``Rescale((224, 224))``."""
    out_h, out_w = (int(s) for s in size)
    height, width = images.shape[-2:]
    if (height, width) == (out_h, out_w):
        return images
    return _axis(_skimage_axis, height, out_h, images) @ images @ _axis(_skimage_axis, width, out_w, images).T


# -- PIL's 8-bit BILINEAR resize (LinearityIQA's and SPAQ's loaders) -----------------------------------

#: Fixed-point precision of PIL's 8-bit resampling (libImaging/Resample.c: ``32 - 8 - 2``).
PIL_PRECISION_BITS = 22


@lru_cache(maxsize=64)
def _pil_bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's ``precompute_coeffs`` for BILINEAR along one axis, as ``[n_out, n_in]`` matrices: the
    normalised float64 weights, and the fixed-point integers ``normalize_coeffs_8bpc`` makes of them
    (``(int)(w * 2**22 + 0.5)``, weights are never negative for BILINEAR)."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale  # BILINEAR's support is 1, stretched when shrinking
    centers = (np.arange(n_out) + 0.5) * scale
    first = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    end = np.minimum(np.trunc(centers + support + 0.5), n_in).astype(np.int64)
    taps = np.arange(n_in)[None, :]
    inside = (taps >= first[:, None]) & (taps < end[:, None])
    distance = np.abs((taps - centers[:, None] + 0.5) * (1.0 / filter_scale))
    weights = np.where(inside & (distance < 1.0), 1.0 - distance, 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # summed left to right, as the C loop
    weights = np.divide(weights, total, out=weights.copy(), where=total != 0)
    fixed = np.trunc(weights * (1 << PIL_PRECISION_BITS) + 0.5)
    return weights, fixed


def _pil_pass_8bit(levels: torch.Tensor, fixed: torch.Tensor, axis: int) -> torch.Tensor:
    """One PIL pass on integer levels (float64, exact): ``clip8((sum(level * k) + 2**21) >> 22)``."""
    half = float(1 << (PIL_PRECISION_BITS - 1))
    acc = levels @ fixed.T if axis == -1 else fixed @ levels
    return torch.floor((acc + half) / float(1 << PIL_PRECISION_BITS)).clamp(0, 255)


def pil_bilinear_resize(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``PIL.Image.resize((W, H), BILINEAR)`` of the 8-bit image, returned in [0, 1] (as ``to_tensor``).

    The value is PIL's, bit for bit: horizontal pass then vertical pass (each only if that side changes),
    22-bit fixed-point weights, rounded and clipped to 8 bits after each pass (libImaging/Resample.c; the
    order of every Pillow the originals could run; Pillow 13 runs the vertical pass first when the height
    shrinks much more than the width, python-pillow/Pillow#9549, which can move a pixel by one level). The gradient is
    straight-through: that of the same resize without rounding (PIL's float weights, = its mode 'F'
    result). The value of an input off the 8-bit grid is that of its rounded levels (:func:`quantize_8bit`
    does that rounding explicitly, as the pipelines here do).
    LinearityIQA test_demo.py ``resize(im, (498, 664))``; SPAQ Prepare_image.py ``Resize(512)``.
    """
    out_h, out_w = (int(s) for s in size)
    height, width = images.shape[-2:]
    if (height, width) == (out_h, out_w):
        return images
    levels = (images.detach().to(torch.float64).clamp(0, 1) * 255).round()
    smooth = images
    if width != out_w:
        levels = _pil_pass_8bit(levels, _axis(_pil_bilinear_axis, width, out_w, levels, part=1), -1)
        smooth = smooth @ _axis(_pil_bilinear_axis, width, out_w, smooth, part=0).T
    if height != out_h:
        levels = _pil_pass_8bit(levels, _axis(_pil_bilinear_axis, height, out_h, levels, part=1), -2)
        smooth = _axis(_pil_bilinear_axis, height, out_h, smooth, part=0) @ smooth
    exact = (levels / 255).to(images.dtype)
    return smooth + (exact - smooth).detach()


def state_from_checkpoint(checkpoint: Any, key: str | None, label: str) -> dict[str, torch.Tensor]:
    """The state dict stored under ``key`` (or the checkpoint itself when ``key`` is None).

    Drops a ``module.`` prefix (a model saved inside ``nn.DataParallel``) and the ``_metadata`` of the
    saved dict, and casts floating tensors to float32 (mixed-precision training can leave halves).
    """
    if key is not None:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            found = (
                ", ".join(map(str, list(checkpoint)[:8]))
                if isinstance(checkpoint, Mapping)
                else type(checkpoint).__name__
            )
            raise WeightsError(
                f"{label}: expected a checkpoint dict with the key {key!r} (the official layout), "
                f"found: {found}; is it the right file?"
            )
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(
            f"{label}: expected a state dict (parameter name -> tensor) "
            f"{'under ' + repr(key) if key else 'at the top level'}, found {type(checkpoint).__name__}"
            f"; is it the right file?"
        )
    state = {}
    for name, tensor in checkpoint.items():
        name = name[len("module.") :] if name.startswith("module.") else name
        state[name] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def build_from_state(factory: Callable[[], nn.Module], state: dict[str, torch.Tensor], label: str) -> nn.Module:
    """``factory()`` built on the meta device, then given the checkpoint's tensors (strict key check)."""
    with torch.device("meta"):
        net = factory()
    load_state_dict_strict(net, state, label, assign=True)
    left = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise WeightsError(f"{label}: the checkpoint leaves {', '.join(left[:5])} unset; is it the right file?")
    return net


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Top/left corners of patches along one side: every ``stride`` pixels, plus one flush with the far edge
    when the stride does not land there (as SPAQ's ``Image_load.generate_patches``)."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def extract_patches(images: torch.Tensor, patch: int, stride: int) -> tuple[torch.Tensor, int]:
    """All ``patch`` x ``patch`` crops at :func:`patch_starts` positions, for the whole batch in one gather.

    Returns ``([B * n, C, patch, patch], n)``, image-major (the ``n`` patches of image 0 first), row-major
    inside an image. Differentiable (an index gather).
    """
    batch, channels, height, width = images.shape
    offsets = torch.arange(patch, device=images.device)
    rows = torch.tensor(patch_starts(height, patch, stride), device=images.device)[:, None] + offsets  # [nh, p]
    cols = torch.tensor(patch_starts(width, patch, stride), device=images.device)[:, None] + offsets  # [nw, p]
    grid = images[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [B, C, nh, nw, p, p]
    n = rows.shape[0] * cols.shape[0]
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(batch * n, channels, patch, patch), n
