"""MPRNet (Zamir et al., "Multi-Stage Progressive Image Restoration", CVPR 2021), denoising variant.

Written from the description of swz30/MPRNet (Denoising/MPRNet.py). Module and attribute names follow
that file so the official ``model_denoising.pth`` state dict loads with no key renaming; in particular one
PReLU is shared by every channel-attention block, so its single weight appears under many keys, as in
the official checkpoint.

The network works on three stages: four quarter-patches, two half-patches, then the full image. The
patches of a stage share weights and are processed independently, so here they are stacked along the
batch dimension (same result, one pass instead of four). The input height and width must be
multiples of 8 (quarter patches are halved twice by the encoder); callers pad first.
"""

from __future__ import annotations

import torch
from torch import nn

#: The official denoising configuration (``MPRNet()`` defaults in the reference file).
OFFICIAL_CONFIG = dict(
    in_c=3,
    out_c=3,
    n_feat=80,
    scale_unetfeats=48,
    scale_orsnetfeats=32,
    num_cab=8,
    kernel_size=3,
    reduction=4,
    bias=False,
)

#: Height and width must be multiples of this.
MULTIPLE = 8


def _conv(cin: int, cout: int, kernel_size: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: a per-channel gate from the global average of each channel."""

    def __init__(self, channels: int, reduction: int, bias: bool):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=bias),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class CAB(nn.Module):
    """Channel-attention block: conv-act-conv, gated, plus the input."""

    def __init__(self, channels: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, kernel_size, bias), act, _conv(channels, channels, kernel_size, bias)
        )
        self.CA = ChannelAttention(channels, reduction, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.CA(self.body(x))


class SAM(nn.Module):
    """Supervised attention: predicts the stage's image and gates the features passed on with it."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.conv1 = _conv(channels, channels, kernel_size, bias)
        self.conv2 = _conv(channels, 3, kernel_size, bias)
        self.conv3 = _conv(3, channels, kernel_size, bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * gate + x, img


class DownSample(nn.Module):
    """Bilinear halving, then a 1x1 conv widening by ``extra`` channels."""

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.down = nn.Sequential(
            nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
            nn.Conv2d(channels, channels + extra, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear doubling, then a 1x1 conv narrowing by ``extra`` channels; optionally adds a skip input."""

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(channels + extra, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return x if skip is None else x + skip


def _cabs(n: int, channels: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*(CAB(channels, kernel_size, reduction, bias, act) for _ in range(n)))


class Encoder(nn.Module):
    """Three-level U-Net encoder; with ``csff`` it also fuses the previous stage's encoder/decoder features."""

    def __init__(
        self,
        n_feat: int,
        kernel_size: int,
        reduction: int,
        act: nn.Module,
        bias: bool,
        scale_unetfeats: int,
        csff: bool,
    ):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.encoder_level1 = _cabs(2, widths[0], kernel_size, reduction, bias, act)
        self.encoder_level2 = _cabs(2, widths[1], kernel_size, reduction, bias, act)
        self.encoder_level3 = _cabs(2, widths[2], kernel_size, reduction, bias, act)
        self.down12 = DownSample(widths[0], scale_unetfeats)
        self.down23 = DownSample(widths[1], scale_unetfeats)
        self.csff = csff
        if csff:
            for i, w in enumerate(widths, start=1):
                setattr(self, f"csff_enc{i}", nn.Conv2d(w, w, 1, bias=bias))
                setattr(self, f"csff_dec{i}", nn.Conv2d(w, w, 1, bias=bias))

    def _fuse(self, level: int, x: torch.Tensor, enc: list | None, dec: list | None) -> torch.Tensor:
        if enc is None or dec is None:
            return x
        return x + getattr(self, f"csff_enc{level}")(enc[level - 1]) + getattr(self, f"csff_dec{level}")(dec[level - 1])

    def forward(self, x: torch.Tensor, enc: list | None = None, dec: list | None = None) -> list[torch.Tensor]:
        e1 = self._fuse(1, self.encoder_level1(x), enc, dec)
        e2 = self._fuse(2, self.encoder_level2(self.down12(e1)), enc, dec)
        e3 = self._fuse(3, self.encoder_level3(self.down23(e2)), enc, dec)
        return [e1, e2, e3]


class Decoder(nn.Module):
    """Three-level U-Net decoder with channel-attention on the skip connections."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool, scale_unetfeats: int):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.decoder_level1 = _cabs(2, widths[0], kernel_size, reduction, bias, act)
        self.decoder_level2 = _cabs(2, widths[1], kernel_size, reduction, bias, act)
        self.decoder_level3 = _cabs(2, widths[2], kernel_size, reduction, bias, act)
        self.skip_attn1 = CAB(widths[0], kernel_size, reduction, bias, act)
        self.skip_attn2 = CAB(widths[1], kernel_size, reduction, bias, act)
        self.up21 = UpSample(widths[0], scale_unetfeats)
        self.up32 = UpSample(widths[1], scale_unetfeats)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        e1, e2, e3 = feats
        d3 = self.decoder_level3(e3)
        d2 = self.decoder_level2(self.up32(d3, self.skip_attn2(e2)))
        d1 = self.decoder_level1(self.up21(d2, self.skip_attn1(e1)))
        return [d1, d2, d3]


class ORB(nn.Module):
    """Original-resolution block: ``num_cab`` CABs and a conv, plus the input."""

    def __init__(self, channels: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool, num_cab: int):
        super().__init__()
        layers = [CAB(channels, kernel_size, reduction, bias, act) for _ in range(num_cab)]
        layers.append(_conv(channels, channels, kernel_size))  # bias-free in the reference, whatever ``bias`` says
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ORSNet(nn.Module):
    """Stage 3: full-resolution blocks fed with the (upsampled) stage-2 encoder and decoder features."""

    def __init__(
        self,
        n_feat: int,
        scale_orsnetfeats: int,
        kernel_size: int,
        reduction: int,
        act: nn.Module,
        bias: bool,
        scale_unetfeats: int,
        num_cab: int,
    ):
        super().__init__()
        width = n_feat + scale_orsnetfeats
        self.orb1 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb2 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb3 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.up_enc1 = UpSample(n_feat, scale_unetfeats)
        self.up_dec1 = UpSample(n_feat, scale_unetfeats)
        self.up_enc2 = nn.Sequential(
            UpSample(n_feat + scale_unetfeats, scale_unetfeats), UpSample(n_feat, scale_unetfeats)
        )
        self.up_dec2 = nn.Sequential(
            UpSample(n_feat + scale_unetfeats, scale_unetfeats), UpSample(n_feat, scale_unetfeats)
        )
        for i in (1, 2, 3):
            setattr(self, f"conv_enc{i}", nn.Conv2d(n_feat, width, 1, bias=bias))
            setattr(self, f"conv_dec{i}", nn.Conv2d(n_feat, width, 1, bias=bias))

    def forward(self, x: torch.Tensor, enc: list[torch.Tensor], dec: list[torch.Tensor]) -> torch.Tensor:
        x = self.orb1(x) + self.conv_enc1(enc[0]) + self.conv_dec1(dec[0])
        x = self.orb2(x) + self.conv_enc2(self.up_enc1(enc[1])) + self.conv_dec2(self.up_dec1(dec[1]))
        x = self.orb3(x) + self.conv_enc3(self.up_enc2(enc[2])) + self.conv_dec3(self.up_dec2(dec[2]))
        return x


def _split(feats: list[torch.Tensor], parts: int) -> list[list[torch.Tensor]]:
    """``[level][parts*B]`` -> ``[part][level][B]``."""
    chunks = [f.chunk(parts, dim=0) for f in feats]
    return [[c[p] for c in chunks] for p in range(parts)]


class MPRNet(nn.Module):
    """The three-stage MPRNet; :meth:`forward` returns the final (stage-3) restored image."""

    def __init__(
        self,
        in_c: int = 3,
        out_c: int = 3,
        n_feat: int = 80,
        scale_unetfeats: int = 48,
        scale_orsnetfeats: int = 32,
        num_cab: int = 8,
        kernel_size: int = 3,
        reduction: int = 4,
        bias: bool = False,
    ):
        super().__init__()
        act = nn.PReLU()  # one shared activation, as in the reference
        k, r = kernel_size, reduction
        self.shallow_feat1 = nn.Sequential(_conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.shallow_feat2 = nn.Sequential(_conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.shallow_feat3 = nn.Sequential(_conv(in_c, n_feat, k, bias), CAB(n_feat, k, r, bias, act))
        self.stage1_encoder = Encoder(n_feat, k, r, act, bias, scale_unetfeats, csff=False)
        self.stage1_decoder = Decoder(n_feat, k, r, act, bias, scale_unetfeats)
        self.stage2_encoder = Encoder(n_feat, k, r, act, bias, scale_unetfeats, csff=True)
        self.stage2_decoder = Decoder(n_feat, k, r, act, bias, scale_unetfeats)
        self.stage3_orsnet = ORSNet(n_feat, scale_orsnetfeats, k, r, act, bias, scale_unetfeats, num_cab)
        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias)
        self.concat12 = _conv(n_feat * 2, n_feat, k, bias)
        self.concat23 = _conv(n_feat * 2, n_feat + scale_orsnetfeats, k, bias)
        self.tail = _conv(n_feat + scale_orsnetfeats, out_c, k, bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height % MULTIPLE or width % MULTIPLE:
            raise ValueError(f"MPRNet needs height and width divisible by {MULTIPLE}, got {height}x{width}; pad first")
        hh, hw = height // 2, width // 2
        top, bottom = image[..., :hh, :], image[..., hh:, :]

        # Stage 1: four quarter patches (left/right of top and bottom), stacked on the batch axis.
        quarters = torch.cat([top[..., :hw], top[..., hw:], bottom[..., :hw], bottom[..., hw:]], dim=0)
        lt, rt, lb, rb = _split(self.stage1_encoder(self.shallow_feat1(quarters)), 4)
        feat1_top = [torch.cat(pair, dim=3) for pair in zip(lt, rt)]
        feat1_bot = [torch.cat(pair, dim=3) for pair in zip(lb, rb)]
        feat1 = [torch.cat(pair, dim=0) for pair in zip(feat1_top, feat1_bot)]  # halves stacked: [top; bottom]
        res1 = self.stage1_decoder(feat1)
        halves = torch.cat([top, bottom], dim=0)
        sam_feats, _ = self.sam12(res1[0], halves)

        # Stage 2: the two halves, fused with stage-1 features.
        x2 = self.concat12(torch.cat([self.shallow_feat2(halves), sam_feats], dim=1))
        top2, bot2 = _split(self.stage2_encoder(x2, feat1, res1), 2)
        feat2 = [torch.cat(pair, dim=2) for pair in zip(top2, bot2)]
        res2 = self.stage2_decoder(feat2)
        sam_feats3, _ = self.sam23(res2[0], image)

        # Stage 3: full resolution.
        x3 = self.concat23(torch.cat([self.shallow_feat3(image), sam_feats3], dim=1))
        x3 = self.stage3_orsnet(x3, feat2, res2)
        return self.tail(x3) + image
