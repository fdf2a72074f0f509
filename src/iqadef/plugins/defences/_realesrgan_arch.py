"""SRVGGNetCompact, the small VGG-style x4 super-resolution net behind Real-ESRGAN's ``realesr-general-x4v3``.

Written from the description in xinntao/Real-ESRGAN (realesrgan/archs/srvgg_arch.py); the attribute
names (``body`` as a flat list of conv/activation layers, ``upsampler``) match it so the official
checkpoints (``params`` / ``params_ema``) load unchanged. All convolutions run at the input
resolution; the last one emits ``3 * upscale**2`` channels that a pixel shuffle turns into the x4 image,
which is added to a nearest-neighbour upscaling of the input (the net learns a residual).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: ``realesr-general-x4v3`` (and its ``-wdn`` twin), as built by the reference's inference script.
OFFICIAL_CONFIG = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")


def _activation(act_type: str, channels: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=channels)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1)
    raise ValueError(f"unknown activation {act_type!r}; expected prelu, relu or leakyrelu")


class SRVGGNetCompact(nn.Module):
    """Conv + activation pairs at low resolution, then a pixel shuffle and a nearest-upsampled skip."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ):
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def interpolate_weights(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], first_weight: float
) -> dict[str, torch.Tensor]:
    """Deep network interpolation: ``w * first + (1 - w) * second``, key by key.

    Real-ESRGAN's denoise strength ``s`` blends ``realesr-general-x4v3`` (weight ``s``) with
    ``realesr-general-wdn-x4v3`` (weight ``1 - s``) this way before loading.
    """
    if set(first) != set(second):
        missing = sorted(set(first) ^ set(second))
        raise KeyError(f"the two checkpoints have different keys (e.g. {missing[:3]}); they cannot be blended")
    return {k: first_weight * first[k] + (1.0 - first_weight) * second[k] for k in first}
