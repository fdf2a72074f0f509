"""cAdv: recolour the image through a hint-driven colourisation network and optimise the hints
(Bhattad et al., "Unrestricted adversarial examples via semantic manipulation", ICLR 2020)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from torch import nn

from iqadef import (
    Attack,
    ConfigError,
    Metric,
    Param,
    WeightsError,
    WeightSpec,
    attack_loss,
    hookimpl,
    load_state_dict_strict,
    load_weights,
)

COLORIZATION_WEIGHTS = WeightSpec(
    filename="cadv-colorization-model.pth",
    urls=("https://titan.gml-team.ru:5003/fsdownload/ydzYpLFwY/cadv-colorization-model.pth",),
    description="cAdv colourisation network (Zhang et al. 2017 user-guided colourisation, as loaded by "
    "adversarial-defenses-for-iqa metrics/methods/cadv/run.py; keys model1.0.weight ... model_out.0.bias)",
    param="weights_path",
)

#: The learning rates the benchmark sweeps (ADI ``metrics/methods/utils/attack_presets.json``, presets -3..9).
LR_PRESETS = (1e-05, 2e-05, 5e-05, 0.00011, 0.00023, 0.0005, 0.00108, 0.00232, 0.005, 0.01077, 0.02321, 0.05)


def _convs(cin: int, cout: int, n: int, dilation: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(True)]
    return layers + [nn.BatchNorm2d(cout)]


class ColorizationNet(nn.Module):
    """The reference's ``color_net`` (Zhang et al. 2017's user-guided colourisation generator) with the
    same module names and layer indices, so the published state dict loads strictly. Input: L
    ``[B,1,H,W]`` in [-0.5, 0.5], ab hints ``[B,2,H,W]``, hint mask ``[B,1,H,W]`` (+-0.5); output:
    529-way ab-class logits at 1/4 size and regressed ab in [-1, 1] (``tanh``). Sides: multiples of 8."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(*_convs(4, 64, 2))
        self.model2 = nn.Sequential(*_convs(64, 128, 2))
        self.model3 = nn.Sequential(*_convs(128, 256, 3))
        self.model4 = nn.Sequential(*_convs(256, 512, 3))
        self.model5 = nn.Sequential(*_convs(512, 512, 3, dilation=2))
        self.model6 = nn.Sequential(*_convs(512, 512, 3, dilation=2))
        self.model7 = nn.Sequential(*_convs(512, 512, 3))
        self.model8up = nn.Sequential(nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1))
        self.model3short8 = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1))
        self.model8 = nn.Sequential(nn.ReLU(True), *_convs(256, 256, 2))
        self.model9up = nn.Sequential(nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1))
        self.model2short9 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1))
        self.model9 = nn.Sequential(nn.ReLU(True), *_convs(128, 128, 1))
        self.model10up = nn.Sequential(nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1))
        self.model1short10 = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1))
        self.model10 = nn.Sequential(nn.ReLU(True), nn.Conv2d(128, 128, 3, padding=1), nn.LeakyReLU(0.2))
        self.model_class = nn.Sequential(nn.Conv2d(256, 529, 1))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1), nn.Tanh())

    def forward(self, lightness: torch.Tensor, hints: torch.Tensor, mask: torch.Tensor):
        conv1_2 = self.model1(torch.cat((lightness, hints, mask), dim=1))
        conv2_2 = self.model2(conv1_2[:, :, ::2, ::2])
        conv3_3 = self.model3(conv2_2[:, :, ::2, ::2])
        conv4_3 = self.model4(conv3_3[:, :, ::2, ::2])
        conv7_3 = self.model7(self.model6(self.model5(conv4_3)))
        conv8_3 = self.model8(self.model8up(conv7_3) + self.model3short8(conv3_3))
        out_class = self.model_class(conv8_3.detach())
        conv9_3 = self.model9(self.model9up(conv8_3) + self.model2short9(conv2_2))
        conv10_2 = self.model10(self.model10up(conv9_3) + self.model1short10(conv1_2))
        return out_class, self.model_out(conv10_2)


# -- colour conversion (the reference's own formulas, kept for their exact values and gradients) ---------
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_RGB_FROM_XYZ = (
    (3.24048134, -1.53715152, -0.49853633),
    (-0.96925495, 1.87599, 0.04155593),
    (0.05564664, -0.20404134, 1.05731107),
)
_WHITE = (0.95047, 1.0, 1.08883)


def _mix(t: torch.Tensor, m) -> torch.Tensor:
    return torch.cat([(m[i][0] * t[:, 0] + m[i][1] * t[:, 1] + m[i][2] * t[:, 2])[:, None] for i in range(3)], dim=1)


def rgb_to_lab_scaled(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> the network's Lab: ``(L - 50)/100``, ``a/110``, ``b/110`` (D65, 2 degrees)."""
    mask = (rgb > 0.04045).float()
    rgb = (((rgb + 0.055) / 1.055) ** 2.4) * mask + rgb / 12.92 * (1 - mask)
    xyz = _mix(rgb, _XYZ_FROM_RGB) / torch.tensor(_WHITE, device=rgb.device)[None, :, None, None]
    mask = (xyz > 0.008856).float()
    f = xyz ** (1 / 3.0) * mask + (7.787 * xyz + 16.0 / 116.0) * (1 - mask)
    lightness = 116.0 * f[:, 1] - 16.0
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return torch.cat(((lightness[:, None] - 50.0) / 100.0, a[:, None] / 110.0, b[:, None] / 110.0), dim=1)


def lab_scaled_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab_scaled` (negative linear RGB set to 0 first, as the reference)."""
    fy = (lab[:, 0] * 100.0 + 50.0 + 16.0) / 116.0
    fx = lab[:, 1] * 110.0 / 500.0 + fy
    fz = torch.max(torch.zeros((1,), device=lab.device), fy - lab[:, 2] * 110.0 / 200.0)
    f = torch.cat((fx[:, None], fy[:, None], fz[:, None]), dim=1)
    mask = (f > 0.2068966).float()
    xyz = (f**3.0) * mask + (f - 16.0 / 116.0) / 7.787 * (1 - mask)
    xyz = xyz * torch.tensor(_WHITE, device=lab.device)[None, :, None, None]
    rgb = _mix(xyz, _RGB_FROM_XYZ)
    rgb = torch.max(rgb, torch.zeros_like(rgb))
    mask = (rgb > 0.0031308).float()
    return (1.055 * (rgb ** (1.0 / 2.4)) - 0.055) * mask + 12.92 * rgb * (1 - mask)


def choose_hints(
    net: ColorizationNet,
    lab: torch.Tensor,
    rng: np.random.Generator,
    *,
    clusters: int = 8,
    chosen_clusters: int = 4,
    count: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``get_colorization_data`` for one image: cluster the (Gaussian-smoothed) ab
    channels into ``clusters`` groups, rank the groups by the network's mean hint-free colour entropy,
    and give ``count`` random pixels of the ``chosen_clusters`` lowest-entropy groups their true ab as
    hints (mask 0.5; elsewhere hints 0 and mask -0.5). Returns ``(hints, mask)``."""
    lightness, ab = lab[:, :1], lab[:, 1:]
    features = ndimage.gaussian_filter(ab[0].cpu().numpy(), 3).reshape(2, -1).T
    seed = int(rng.integers(2**31 - 1))
    _, labels = kmeans2(features.astype(np.float64), clusters, minit="++", seed=seed)
    with torch.no_grad():
        logits, _ = net(lightness, torch.zeros_like(ab), torch.full_like(lightness, -0.5))
        distribution = F.softmax(logits, dim=1).clamp(1e-8).squeeze(0)
        entropy = (-1 * distribution * torch.log(distribution)).sum(0)
        entropy = F.interpolate(entropy[None, None], scale_factor=4, mode="nearest").view(-1).cpu()
    # Means in torch float32 as the reference takes them: a near-uniform network ties them to the last bit.
    means = np.array([entropy[torch.from_numpy(labels == i)].mean().item() for i in range(clusters)])
    pixels = np.isin(labels, np.argsort(means)[:chosen_clusters]).nonzero()[0]
    if pixels.shape[0] < count:
        raise ConfigError(
            f"cadv: only {pixels.shape[0]} pixels in the chosen colour clusters, fewer than "
            f"hints={count}; use a larger image or fewer hints"
        )
    picked = torch.from_numpy(pixels[rng.choice(pixels.shape[0], count, replace=False)]).to(lab.device)
    hints = torch.zeros_like(ab)
    hints.view(1, 2, -1)[..., picked] = ab.view(1, 2, -1)[..., picked]
    mask = torch.full_like(lightness, -0.5)
    mask.view(1, 1, -1)[..., picked] = 0.5
    return hints, mask


class CAdv(Attack):
    """cAdv: Adam on the colourisation hints (and their mask) so that the recoloured image scores better.

    Reference: ADI ``metrics/methods/cadv/run.py``: the image is cropped to a multiple of 4 (to 8 where
    4 would break the network's skip connections; the reference fails there), converted to Lab; 50
    hints are taken from the 4 lowest-entropy of 8 k-means colour clusters; then 10 Adam steps (lr
    5e-4, betas 0.9/0.999) on hints and mask, each scoring ``clamp(lab2rgb(L, net(L, hints, mask)))``
    with loss ``1 - f/range``. The result is the recoloured image of the last forward pass (before
    the last step), pasted into the uncropped image. The lightness is kept; no L-p bound.
    """

    name = "cadv"
    params = (
        Param("lr", float, 5e-4, help="Adam learning rate on the hints", low=0.0, presets=LR_PRESETS),
        Param("iters", int, 10, help="Adam steps", low=1),
        Param("hints", int, 50, help="number of colour hints", low=1),
        Param("clusters", int, 8, help="k-means colour clusters", low=1),
        Param("chosen_clusters", int, 4, help="lowest-entropy clusters the hints are drawn from", low=1),
        Param("weights_path", Path, None, help="explicit path to cadv-colorization-model.pth"),
    )
    lr: float
    iters: int
    hints: int
    clusters: int
    chosen_clusters: int
    weights_path: str | None
    weights = (COLORIZATION_WEIGHTS,)

    def setup(self, device: torch.device) -> None:
        label = f"cAdv colourisation network ({COLORIZATION_WEIGHTS.filename})"
        state = load_weights(COLORIZATION_WEIGHTS, self.weights_path)
        if not isinstance(state, dict):
            raise WeightsError(f"{label}: expected a state dict, got {type(state).__name__}; is it the right file?")
        net = ColorizationNet()
        load_state_dict_strict(net, state, label)
        self.network = net.to(device).eval().requires_grad_(False)

    def _one(self, metric: Metric, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        ch, cw = (h // 4) * 4, (w // 4) * 4
        ch, cw = (ch if ch % 8 == 0 else ch - 4), (cw if cw % 8 == 0 else cw - 4)
        if ch < 8 or cw < 8:
            raise ConfigError(f"cadv: the image is {h}x{w}; the colourisation network needs sides of at least 8")
        lab = rgb_to_lab_scaled(image[..., :ch, :cw])
        hints, mask = choose_hints(
            self.network, lab, rng, clusters=self.clusters, chosen_clusters=self.chosen_clusters, count=self.hints
        )
        hints.requires_grad_(True)
        mask.requires_grad_(True)
        optimizer = torch.optim.Adam([hints, mask], lr=self.lr, betas=(0.9, 0.999))
        lightness = lab[:, :1]
        for _ in range(self.iters):
            with torch.enable_grad():
                _, ab = self.network(lightness, hints.clamp(-1, 1), mask.clamp(-0.5, 0.5))
                recoloured = lab_scaled_to_rgb(torch.cat((lightness, ab), dim=1)).clamp(0, 1)
                loss = attack_loss(metric, recoloured).sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        out = image.clone()
        out[..., :ch, :cw] = recoloured.detach()
        return out.clamp(0.0, 1.0)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        self.load(images.device)
        rng = np.random.default_rng(int(seed))
        images = images.detach()
        return torch.cat([self._one(metric, images[i : i + 1], rng) for i in range(images.shape[0])])


@hookimpl
def iqadef_register_attacks(register):
    register(CAdv)
