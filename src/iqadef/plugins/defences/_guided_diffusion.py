"""The ADM UNet of openai/guided-diffusion, with the official module names, so its checkpoints load as they are.

Written from ``guided_diffusion/unet.py`` and ``script_util.py`` of https://github.com/openai/guided-diffusion
(Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021). Only what unconditional sampling
needs is kept: no class embedding, no gradient checkpointing, the "legacy" attention order (heads split before
q/k/v), which is the order of the released checkpoints. ``state_dict()`` key names and shapes equal those of
the official ``UNetModel`` built with the same settings (checked in ``tests/plugins/defences/test_diffpure.py``).

:data:`IMAGENET_256_UNCOND` is the configuration of ``256x256_diffusion_uncond.pt`` (the model DiffPure and the
reference IQA study use); the LSUN 256x256 checkpoints of guided-diffusion share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GuidedUNetConfig:
    """Architecture of a guided-diffusion ``UNetModel`` (the arguments of its ``script_util.create_model``)."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    #: 6 when the model learns its variance (learn_sigma): 3 epsilon channels, then 3 variance channels.
    out_channels: int = 6
    num_res_blocks: int = 2
    #: Resolutions (in pixels) with self-attention, as in script_util's "32,16,8".
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    #: Channels per attention head (-1: use ``num_heads`` heads instead).
    num_head_channels: int = 64
    num_heads: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.0

    @property
    def attention_downsample_rates(self) -> tuple[int, ...]:
        """The ``ds`` values with attention (script_util converts resolutions to downsample rates)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)


#: ``256x256_diffusion_uncond.pt``: ImageNet 256x256, unconditional, learned sigma, linear schedule, 1000 steps.
IMAGENET_256_UNCOND = GuidedUNetConfig()


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[cos(t f), sin(t f)]`` as guided-diffusion orders
    it."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """32-group norm computed in float32 even in a float16 model (as guided-diffusion does for stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (FiLM scale/shift with ``use_scale_shift_norm``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; q, k, v come from one 1x1 conv in the legacy per-head order ``[q_h, k_h, v_h]``."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"attention channels {channels} are not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        # Legacy order: split into heads first, then into q, k, v (each [B*heads, ch, T]).
        q, k, v = qkv.reshape(b * self.num_heads, -1, length).chunk(3, dim=1)
        # softmax(q^T k / sqrt(ch)) v, the same as guided-diffusion's two ch^-1/4 scalings.
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(h.transpose(1, 2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (unconditional): ``forward(x, t) -> [B, out_channels, H, W]``.

    For a learned-sigma model the first ``in_channels`` outputs are the predicted noise (epsilon) and the rest
    the variance interpolation values in [-1, 1] (``learned_range``).
    """

    def __init__(self, config: GuidedUNetConfig = IMAGENET_256_UNCOND):
        super().__init__()
        self.config = config
        mc, dropout, ss = config.model_channels, config.dropout, config.use_scale_shift_norm
        attention_ds = config.attention_downsample_rates
        emb_dim = mc * 4
        self.dtype = torch.float32

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, num_heads=config.num_heads, num_head_channels=config.num_head_channels)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = input_ch = int(config.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, dropout, int(mult * mc), use_scale_shift_norm=ss)]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                down = (
                    ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=ss, down=True)
                    if config.resblock_updown
                    else Downsample(ch, True)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=ss),
            attention(ch),
            ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=ss),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(config.channel_mult))[::-1]:
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, dropout, int(mc * mult), use_scale_shift_norm=ss)]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    layers.append(
                        ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=ss, up=True)
                        if config.resblock_updown
                        else Upsample(ch, True)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, config.out_channels, 3, padding=1))

    def convert_to_fp16(self) -> None:
        """Run the torso's convolutions in float16 (as guided-diffusion's ``use_fp16``); norms stay float32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.half()
        self.dtype = torch.float16

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
