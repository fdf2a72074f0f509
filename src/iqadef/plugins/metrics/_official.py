"""Shared plumbing for metrics rebuilt from their authors' code so that the official checkpoints load as-is.

* preprocessing pieces (ImageNet normalisation, antialiased bilinear resizing) that stay differentiable
  and treat every image of a batch on its own;
* :func:`state_from_checkpoint`: pick the state dict out of an official checkpoint, drop a DataParallel
  ``module.`` prefix, cast half-precision tensors to float32;
* :func:`build_from_state`: build the network on the ``meta`` device (no memory, no random init; the
  ResNeXt-101 of LinearityIQA takes seconds to initialise on a small CPU) and fill it with the checkpoint's
  tensors, strictly: a missing, unexpected or wrongly shaped key is a :class:`WeightsError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from iqadef import WeightsError
from iqadef.core.weights import load_state_dict_strict

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
    """Bilinear, antialiased resize (what PIL's BILINEAR does in the original pipelines), differentiable.

    ``size`` is ``(H, W)``, or one int for the shorter side (aspect ratio kept, as ``transforms.Resize``).
    """
    size = [int(size)] if isinstance(size, int) else [int(s) for s in size]
    if len(size) == 2 and tuple(images.shape[-2:]) == tuple(size):
        return images
    return TF.resize(images, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def state_from_checkpoint(checkpoint: Any, key: str | None, label: str) -> dict[str, torch.Tensor]:
    """The state dict stored under ``key`` (or the checkpoint itself when ``key`` is None).

    Drops a ``module.`` prefix (a model saved inside ``nn.DataParallel``) and the ``_metadata`` of the
    saved dict, and casts floating tensors to float32 (mixed-precision training can leave halves).
    """
    if key is not None:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            found = ", ".join(map(str, list(checkpoint)[:8])) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise WeightsError(f"{label}: expected a checkpoint dict with the key {key!r} (the official layout), "
                               f"found: {found}; is it the right file?")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{label}: expected a state dict (parameter name -> tensor) "
                           f"{'under ' + repr(key) if key else 'at the top level'}, found {type(checkpoint).__name__}"
                           f"; is it the right file?")
    state = {}
    for name, tensor in checkpoint.items():
        name = name[len("module."):] if name.startswith("module.") else name
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
    cols = torch.tensor(patch_starts(width, patch, stride), device=images.device)[:, None] + offsets   # [nw, p]
    grid = images[:, :, rows[:, None, :, None], cols[None, :, None, :]]   # [B, C, nh, nw, p, p]
    n = rows.shape[0] * cols.shape[0]
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(batch * n, channels, patch, patch), n
