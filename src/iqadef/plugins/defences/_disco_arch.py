"""DISCO (Ho & Vasconcelos, "DISCO: Adversarial Defense with Local Implicit Functions", NeurIPS 2022).

DISCO is a LIIF (local implicit image function, Chen et al. 2021) trained on (adversarial, clean)
pairs: an EDSR-baseline encoder (no upsampling tail) turns the image into a feature map; an MLP maps
(the 3x3-unfolded feature nearest to a query point, the point's offset from that feature's centre,
the query cell size) to an RGB value; the four nearest features are blended by the areas of the
opposite rectangles ("local ensemble"). Querying every pixel centre of the input grid gives the
purified image.

Written from the description of chihhuiho/disco (training/models/{liif,edsr,mlp}.py and the config
``training/configs/*/pgd.yaml``) and its use in msu-video-group/adversarial-defenses-for-iqa
(``robustbench/model_zoo/defense/inr.py``). Attribute names match them so the official checkpoint's
state dict (``ckpt['model']['sd']``) loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The DISCO training config: ``liif`` with an ``edsr-baseline`` encoder (no upsampling) and a 4x256 MLP.
OFFICIAL_CONFIG = dict(
    n_resblocks=16,
    n_feats=64,
    hidden_list=(256, 256, 256, 256),
    local_ensemble=True,
    feat_unfold=True,
    cell_decode=True,
)


def _conv(cin: int, cout: int, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=True)


class ResBlock(nn.Module):
    """conv-ReLU-conv plus the input (EDSR residual block, ``res_scale`` 1 in the baseline)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSREncoder(nn.Module):
    """EDSR-baseline without its upsampling tail: head conv, residual blocks, a conv, a global skip.

    ``sub_mean``/``add_mean`` are kept only because the checkpoint has them: the reference's forward
    skips them (its input is already normalised to [-1, 1]).
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean = nn.Conv2d(3, 3, 1)
        self.add_mean = nn.Conv2d(3, 3, 1)
        for p in (*self.sub_mean.parameters(), *self.add_mean.parameters()):
            p.requires_grad_(False)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(*(ResBlock(n_feats, res_scale) for _ in range(n_resblocks)), _conv(n_feats, n_feats))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


class MLP(nn.Module):
    """Linear-ReLU stack (``layers`` as in the reference)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU()]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_coord(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1], shape ``[height, width, 2]``, ordered (row, column)."""
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


class LIIF(nn.Module):
    """Encoder + implicit decoder; :meth:`forward` renders the image at a given output size."""

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 64,
        hidden_list: tuple[int, ...] = (256, 256, 256, 256),
        local_ensemble: bool = True,
        feat_unfold: bool = True,
        cell_decode: bool = True,
    ):
        super().__init__()
        self.local_ensemble = local_ensemble
        self.feat_unfold = feat_unfold
        self.cell_decode = cell_decode
        self.encoder = EDSREncoder(n_resblocks, n_feats)
        in_dim = n_feats * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.imnet = MLP(in_dim, 3, tuple(hidden_list))

    def query(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB at ``coord`` (``[B, Q, 2]``, (row, col) in [-1, 1]) for cells of size ``cell`` (``[B, Q, 2]``)."""
        batch, _, fh, fw = feat.shape
        if self.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(batch, -1, fh, fw)
        feat_coord = make_coord(fh, fw, feat.device, feat.dtype).permute(2, 0, 1).unsqueeze(0).expand(batch, 2, fh, fw)
        scale = coord.new_tensor([fh, fw])
        if self.local_ensemble:
            shifts, eps = [(-1, -1), (-1, 1), (1, -1), (1, 1)], 1e-6
        else:
            shifts, eps = [(0, 0)], 0.0
        radius = coord.new_tensor([1.0 / fh, 1.0 / fw])  # half a feature cell, in [-1, 1] units

        preds, areas = [], []
        for vy, vx in shifts:
            shifted = coord + coord.new_tensor([vy, vx]) * radius + eps
            grid = shifted.clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1)  # grid_sample wants (x, y)
            q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel_coord = (coord - q_coord) * scale
            parts = [q_feat, rel_coord]
            if self.cell_decode:
                parts.append(cell * scale)
            preds.append(self.imnet(torch.cat(parts, dim=-1)))
            areas.append((rel_coord[..., 0] * rel_coord[..., 1]).abs() + 1e-9)

        if self.local_ensemble:  # each prediction is weighted by the area of the diagonally opposite rectangle
            areas = areas[::-1]
        total = torch.stack(areas).sum(dim=0)
        return sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, areas))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None, chunk: int = 90000) -> torch.Tensor:
        """Render ``x`` (normalised to [-1, 1]) at ``size`` (default: its own), ``chunk`` query rows at a time."""
        batch = x.shape[0]
        height, width = size or tuple(x.shape[-2:])
        feat = self.encoder(x)
        coord = make_coord(height, width, x.device, x.dtype).view(1, -1, 2).expand(batch, -1, -1)
        cell = coord.new_tensor([2.0 / height, 2.0 / width]).expand_as(coord)
        step = max(1, chunk // batch)
        out = torch.cat(
            [self.query(feat, coord[:, i : i + step], cell[:, i : i + step]) for i in range(0, coord.shape[1], step)],
            dim=1,
        )
        return out.view(batch, height, width, 3).permute(0, 3, 1, 2)
