"""Full-reference distances used as fidelity terms by the Zhang et al. attacks: LPIPS-VGG, DISTS, 1 - SSIM.

Each distance is per image (``[B]``) and differentiable w.r.t. the first argument. The networks are
rebuilt here from their papers' official code so that the official weight files load unchanged:

* **LPIPS** (Zhang et al. 2018, ``richzhang/PerceptualSimilarity``, ``net='vgg'``, version 0.1):
  torchvision VGG16 ``features`` tapped after relu1_2 .. relu5_3, the scaling layer applied to the
  input mapped to [-1, 1], channel-unit-normalised features, squared differences, the learned 1x1
  ``lin`` layers, spatial mean, summed over the five stages.
* **DISTS** (Ding et al. 2020, ``dingkeyan93/DISTS``): the same VGG16 with every max-pool replaced by
  Hann-window L2 pooling, the image itself as stage 0, and per-channel structure/texture terms
  weighted by the learned ``alpha``/``beta`` (c1 = c2 = 1e-6). Like ``IQA_pytorch.DISTS``, which the
  reference attack calls, images whose shorter side is about 2x256 or more are average-pooled first.
* **SSIM** as in ``IQA_pytorch.SSIM`` (what the reference attacks use): 11x11 Gaussian window,
  sigma 1.5, no padding ("valid"), C1 = 0.01^2, C2 = 0.03^2, contrast-structure term clipped at 0,
  averaged over channels and positions.

Checked against the PyPI packages ``lpips`` 0.1.4, ``DISTS_pytorch`` 0.1 and ``IQA_pytorch`` (same
VGG16 weights, their calibration files): the distances agree to float32 precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from iqadef import (
    Attack,
    ConfigError,
    Metric,
    Param,
    WeightsError,
    WeightSpec,
    attack_loss,
    load_state_dict_strict,
    load_weights,
)

# -- weight files ------------------------------------------------------------------------------

VGG16_BACKBONE = WeightSpec(
    filename="vgg16-397923af.pth",
    urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
    sha256="397923af",  # the prefix torchvision's file name carries (and torchvision checks)
    description="torchvision VGG16 ImageNet weights (only the features.* convolutions are used)",
    param="backbone_path",
    size=553_433_881,  # torchvision's VGG16_Weights.IMAGENET1K_V1 meta: _file_size 527.796 (MiB)
)
LPIPS_VGG_LIN = WeightSpec(
    filename="lpips_v0.1_vgg.pth",
    urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",),
    description="LPIPS v0.1 linear calibration for VGG (lpips/weights/v0.1/vgg.pth, keys lin0..lin4.model.1.weight)",
    param="calibration_path",
)
DISTS_ALPHA_BETA = WeightSpec(
    filename="DISTS_weights.pt",
    urls=("https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",),
    description="DISTS alpha/beta weights (DISTS_pytorch/weights.pt, keys alpha and beta, each [1, 1475, 1, 1])",
    param="calibration_path",
)

#: Indices in ``vgg16().features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG_TAPS = (3, 8, 15, 22, 29)
#: Indices of the max-pool layers between the taps (DISTS swaps them for L2 pooling).
VGG_POOLS = (4, 9, 16, 23)
VGG_CHANNELS = (64, 128, 256, 512, 512)
DISTS_CHANNELS = (3, *VGG_CHANNELS)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: LPIPS' ScalingLayer, applied to inputs in [-1, 1]. (It equals ImageNet normalisation of [0, 1] input.)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _column(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values).view(1, -1, 1, 1)


def _check_shapes(module: nn.Module, state: dict[str, Any], label: str) -> None:
    """Name the first tensor whose shape differs (load_state_dict would raise a bare RuntimeError)."""
    expected = module.state_dict()
    for key, value in state.items():
        if key in expected and isinstance(value, torch.Tensor) and value.shape != expected[key].shape:
            raise WeightsError(
                f"{label}: {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}; is it the right file?"
            )


def _as_state_dict(obj: Any, label: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{label}: expected a state dict (a mapping of names to tensors), "
            f"got {type(obj).__name__}; is it the right file?"
        )
    return obj


def vgg16_features(backbone_path: str | Path | None = None) -> nn.Sequential:
    """``torchvision.models.vgg16().features`` (layers 0-29) with the ImageNet weights loaded.

    The checkpoint is torchvision's own file (keys ``features.N.weight/bias``, ``classifier.*``);
    the classifier is not needed and its keys are skipped.
    """
    import torchvision  # lazily: torchvision's import costs ~2 s at every CLI start

    with torch.device("meta"):  # no memory for the 120M classifier parameters we throw away
        features = torchvision.models.vgg16(weights=None).features[:30]
    features = features.to_empty(device="cpu")
    label = f"VGG16 backbone ({VGG16_BACKBONE.filename})"
    state = _as_state_dict(load_weights(VGG16_BACKBONE, backbone_path), label)
    wanted = {}
    for key, value in state.items():
        if key.startswith("features."):
            wanted[key.removeprefix("features.")] = value
        elif not key.startswith("classifier."):
            wanted[key] = value  # reported as unexpected
    _check_shapes(features, wanted, label)
    load_state_dict_strict(features, wanted, label)
    return features


def _l2_pool(x: torch.Tensor) -> torch.Tensor:
    """DISTS' L2 pooling: sqrt of a Hann-weighted (3x3 of a 5-tap window) mean of x^2, stride 2."""
    window = torch.hann_window(5, periodic=False, dtype=x.dtype, device=x.device)[1:-1]
    kernel = window[:, None] * window[None, :]
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    out = F.conv2d(x * x, kernel, stride=2, padding=1, groups=x.shape[1])
    return (out + 1e-12).sqrt()


def vgg_stages(features: nn.Sequential, x: torch.Tensor, *, l2_pooling: bool = False) -> list[torch.Tensor]:
    """Outputs of relu1_2 .. relu5_3 for an already normalised input."""
    outs = []
    h = x
    for index in range(VGG_TAPS[-1] + 1):
        h = _l2_pool(h) if (l2_pooling and index in VGG_POOLS) else features[index](h)
        if index in VGG_TAPS:
            outs.append(h)
    return outs


class _LpipsLinear(nn.Module):
    """LPIPS' NetLinLayer: dropout then a bias-free 1x1 conv to one channel (keys ``model.1.weight``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LpipsVgg(nn.Module):
    """LPIPS v0.1 with the VGG16 trunk; ``forward(x, y)`` gives the per-image distance for [0, 1] images."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        for k, channels in enumerate(VGG_CHANNELS):
            self.add_module(f"lin{k}", _LpipsLinear(channels))
        self.register_buffer("shift", _column(LPIPS_SHIFT), persistent=False)
        self.register_buffer("scale", _column(LPIPS_SCALE), persistent=False)

    @classmethod
    def load(cls, backbone_path: str | Path | None = None, calibration_path: str | Path | None = None) -> "LpipsVgg":
        net = cls(vgg16_features(backbone_path))
        label = f"LPIPS linear layers ({LPIPS_VGG_LIN.filename})"
        state = _as_state_dict(load_weights(LPIPS_VGG_LIN, calibration_path), label)
        lins = nn.ModuleDict({f"lin{k}": getattr(net, f"lin{k}") for k in range(len(VGG_CHANNELS))})
        _check_shapes(lins, state, label)
        load_state_dict_strict(lins, state, label)
        return net

    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised stage features of [0, 1] images (reusable for a fixed reference image)."""
        h = ((2 * images - 1) - self.shift) / self.scale  # LPIPS takes [-1, 1] input
        # vector_norm's gradient at a zero vector is 0 (sqrt would give NaN); the value equals LPIPS'.
        return [f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + 1e-10) for f in vgg_stages(self.features, h)]

    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for k, (a, b) in enumerate(zip(feats0, feats1)):
            total = total + getattr(self, f"lin{k}").model((a - b) ** 2).mean(dim=(2, 3))
        return total.flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.embed(x), self.embed(y))


class _DistsWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))


class Dists(nn.Module):
    """DISTS; ``forward(x, y)`` gives the per-image distance (0 for identical images) for [0, 1] images."""

    C1 = 1e-6
    C2 = 1e-6

    def __init__(self, features: nn.Sequential, *, resize: bool = True):
        super().__init__()
        self.features = features
        self.weights = _DistsWeights()
        self.resize = resize
        self.register_buffer("mean", _column(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _column(IMAGENET_STD), persistent=False)

    @classmethod
    def load(
        cls, backbone_path: str | Path | None = None, calibration_path: str | Path | None = None, *, resize: bool = True
    ) -> "Dists":
        net = cls(vgg16_features(backbone_path), resize=resize)
        label = f"DISTS weights ({DISTS_ALPHA_BETA.filename})"
        state = _as_state_dict(load_weights(DISTS_ALPHA_BETA, calibration_path), label)
        _check_shapes(net.weights, state, label)
        load_state_dict_strict(net.weights, state, label)
        return net

    def downsample(self, images: torch.Tensor) -> torch.Tensor:
        """IQA_pytorch's ``downsample``: average-pool by round(min(H, W) / 256) when that is above 1."""
        factor = max(1, round(min(images.shape[-2:]) / 256))
        if not self.resize or factor == 1:
            return images
        return F.avg_pool2d(images, factor, stride=factor)

    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = self.downsample(images)
        h = (images - self.mean) / self.std
        return [images, *vgg_stages(self.features, h, l2_pooling=True)]

    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
        total = self.weights.alpha.sum() + self.weights.beta.sum()
        alphas = torch.split(self.weights.alpha / total, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.weights.beta / total, DISTS_CHANNELS, dim=1)
        similarity = 0
        for a, b, alpha, beta in zip(feats0, feats1, alphas, betas):
            mean_a = a.mean(dim=(2, 3), keepdim=True)
            mean_b = b.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mean_a * mean_b + self.C1) / (mean_a**2 + mean_b**2 + self.C1)
            var_a = ((a - mean_a) ** 2).mean(dim=(2, 3), keepdim=True)
            var_b = ((b - mean_b) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (a * b).mean(dim=(2, 3), keepdim=True) - mean_a * mean_b
            structure = (2 * cov + self.C2) / (var_a + var_b + self.C2)
            similarity = similarity + (alpha * texture).sum(1) + (beta * structure).sum(1)
        return 1 - similarity.flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.embed(x), self.embed(y))


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image ``1 - SSIM`` with IQA_pytorch's settings (see the module docstring); data range 1."""
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ConfigError(
            f"SSIM distance: images of {tuple(x.shape[-2:])} px are smaller than the "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} window; use images of at least {SSIM_WINDOW} px"
        )
    kernel = kornia.filters.get_gaussian_kernel2d((SSIM_WINDOW, SSIM_WINDOW), (SSIM_SIGMA, SSIM_SIGMA))
    kernel = kernel.to(dtype=x.dtype, device=x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return kornia.filters.filter2d(t, kernel, padding="valid")

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    contrast_structure = F.relu((2 * cov + c2) / (var_x + var_y + c2))
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return 1 - (luminance * contrast_structure).mean(dim=(1, 2, 3))


# -- the attack loop shared by the three variants ------------------------------------------------------

#: The learning rates the reference sweeps (attack_presets.json, zhang-et-al-*).
LR_PRESETS = (1e-05, 2e-05, 5e-05, 0.00011, 0.00023, 0.0005, 0.00108, 0.00232, 0.005, 0.01077, 0.02321, 0.05)


class PerceptualAdamAttack(Attack):
    """Adam on the image itself, minimising ``distance(x_adv, x) + (1 - f(x_adv)/range)``.

    Subclasses give :meth:`embed` (what of the clean image is kept fixed) and :meth:`distance`.
    """

    norm: ClassVar[str | None] = None
    params: ClassVar[tuple[Param, ...]] = (
        Param("lr", float, 0.005, "Adam learning rate on the pixels", low=0.0, presets=LR_PRESETS),
        Param("iterations", int, 10, "number of Adam steps", low=1),
    )
    lr: float
    iterations: int

    def embed(self, images: torch.Tensor) -> Any:
        return images

    def distance(self, adversarial: torch.Tensor, reference: Any) -> torch.Tensor:
        raise NotImplementedError

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Deterministic (``seed`` is unused); each image is optimised independently of its batch."""
        self.load(images.device)
        clean = images.detach()
        with torch.no_grad():
            reference = self.embed(clean)
        adversarial = clean.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([adversarial], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                loss = (self.distance(adversarial, reference) + attack_loss(metric, adversarial)).sum()
                (grad,) = torch.autograd.grad(loss, adversarial)
                adversarial.grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                optimizer.step()
                with torch.no_grad():
                    adversarial.nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
        return adversarial.detach().clamp(0.0, 1.0)


class NetworkDistanceAttack(PerceptualAdamAttack):
    """A Zhang et al. attack whose distance is a network (LPIPS, DISTS) built in ``setup`` as ``self.network``.

    The clean images' features are computed once per run, not at every step.
    """

    network: Any

    def embed(self, images: torch.Tensor) -> Any:
        return self.network.embed(images)

    def distance(self, adversarial: torch.Tensor, reference: Any) -> torch.Tensor:
        return self.network.distance(self.network.embed(adversarial), reference)
