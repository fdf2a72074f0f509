"""``tiny-iqa``: iqadef's own small learned NR-IQA metric, whose weights ship inside the package.

It exists so that the default run works offline, on CPU, in minutes: every attack in that run
targets it. It is *not* one of the reference paper's metrics (LinearityIQA, MetaIQA, SPAQ) and
makes no claim to match human opinion; it was trained only on synthetic distortions (JPEG, blur,
noise, contrast loss, pixelation) of the bundled images, see ``docs/embedded.md`` and
``scripts/train_embedded_metric.py``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from iqadef import Metric, Param, WeightsError, hookimpl
from iqadef.core.weights import load_checkpoint, load_state_dict_strict

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Scores are ``SCORE_CENTRE + SCORE_SCALE * network output``; training targets span 10 (worst) .. 90 (clean).
SCORE_CENTRE = 50.0
SCORE_SCALE = 40.0
WEIGHTS_FILE = "tiny_iqa.pt"


def packaged_weights() -> resources.abc.Traversable:
    """The weights file bundled in the package (``iqadef/data/weights/tiny_iqa.pt``)."""
    return resources.files("iqadef").joinpath("data", "weights", WEIGHTS_FILE)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Resize to 224x224 (bilinear, antialiased; aspect ratio not kept). Differentiable; each image is
    treated on its own, so a batch gives the per-image results. Normalisation happens in the network."""
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                               align_corners=False, antialias=True)
    return images


def _blur_matrix(n: int, like: torch.Tensor, size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """The ``n x n`` matrix ``A`` with ``x @ A`` = Gaussian blur of ``x`` along its last axis (reflect
    padding). A matrix product is far faster on CPU, forwards and backwards, than a 1-channel conv."""
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = (g / g.sum()).view(1, 1, size)
    basis = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(1)
    return F.conv1d(F.pad(basis, (size // 2, size // 2), mode="reflect"), g).squeeze(1)


def mscn(luma: torch.Tensor, c: float = 0.01) -> torch.Tensor:
    """Mean-subtracted contrast-normalised luminance (as in BRISQUE, and CNNIQA's local normalisation):
    ``(Y - mu) / (sigma + c)`` over a 7x7 Gaussian window (sigma 7/6). It removes local brightness
    and contrast, so what is left is the local structure that noise, blur and compression change."""
    h, w = luma.shape[-2:]
    along_w, along_h = _blur_matrix(w, luma), _blur_matrix(h, luma)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return along_h.transpose(0, 1) @ (x @ along_w)

    mu = blur(luma)
    var = blur(luma * luma) - mu * mu
    return (luma - mu) / (var.clamp_min(0) + 1e-6).sqrt().add(c)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _mean_log_std(features: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and log standard deviation.

    The std keeps the texture/noise energy that average pooling washes out; its log turns the ratios
    between scales (what blur, noise and contrast change, whatever the content) into differences
    that a linear layer can read.
    """
    flat = features.flatten(2)
    mean = flat.mean(dim=2)
    log_std = 0.5 * torch.log(flat.var(dim=2, unbiased=False) + 1e-4)
    return torch.cat([mean, log_std], dim=1)


class TinyIQANet(nn.Module):
    """A 5-stage CNN (stride-2 stages, 224 -> 7), mean + log-std pooling of four stages, 2-layer head.

    Input: RGB in [0, 1] at 224x224 (see :func:`preprocess`); the stem sees the ImageNet-normalised
    RGB plus the MSCN map of the luminance (see :func:`mscn`). Returns the raw output (about -1 .. 1).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 80, 128)):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = _conv_bn_relu(4, w0, 2)                                              # 112
        self.stage1 = nn.Sequential(_conv_bn_relu(w0, w1, 2), _conv_bn_relu(w1, w1, 1))  # 56
        self.stage2 = nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2, 1))  # 28
        self.stage3 = nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3, 1))  # 14
        self.stage4 = nn.Sequential(_conv_bn_relu(w3, w4, 2), _conv_bn_relu(w4, w4, 1))  # 7
        self.head = nn.Sequential(nn.Linear(2 * (w0 + w1 + w2 + w4), 64), nn.ReLU(inplace=True),
                                  nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        s0 = self.stem(torch.cat([(x - mean) / std, mscn(luma)], dim=1))
        s1 = self.stage1(s0)
        s2 = self.stage2(s1)
        s4 = self.stage4(self.stage3(s2))
        pooled = torch.cat([_mean_log_std(f) for f in (s0, s1, s2, s4)], dim=1)
        return self.head(pooled).squeeze(1)


class TinyIQA(Metric):
    """iqadef's own small learned NR-IQA (offline default; synthetic distortions; not a paper metric).

    A ~0.4M-parameter CNN whose weights ship with iqadef (``iqadef/data/weights/tiny_iqa.pt``), so it
    needs no download. Trained by ``scripts/train_embedded_metric.py`` to rank JPEG, blur, noise,
    contrast and pixelation severities of 10 bundled images (targets 90 clean .. 10 worst); held-out
    SROCC 0.44 (blur, noise, contrast, pixelation 0.56-0.70; it is nearly blind to JPEG). Its output is
    MOS-like, higher is better, with no squashing at the end so attacks always get a gradient. It
    stands in for the paper's metrics in quick offline runs; it says nothing about how LinearityIQA,
    MetaIQA or SPAQ behave.
    """

    name = "tiny-iqa"
    version = "1"
    #: The MSCN map (a local variance, E[x^2] - E[x]^2) cancels catastrophically with bf16 weights and
    #: activations (scores off by half the range, benchmarks/precision.py); under autocast the variance and
    #: the pooling stay float32.
    precision_style = "autocast"
    higher_is_better = True
    #: Span of the scores over the 14 bundled images and their training distortions (tiny_iqa.json).
    range = (-6.0, 86.0)
    input_policy = ("resized to 224x224 (bilinear, antialiased; aspect ratio not kept); the network sees "
                    "ImageNet-normalised RGB plus the MSCN (local contrast-normalised) luminance")
    params = (
        Param("weights_path", Path, None,
              help="a tiny_iqa.pt state dict to use instead of the packaged one (e.g. after retraining)"),
    )
    weights_path: str | None

    def weights_in_use(self) -> tuple[Path, ...]:
        """The file loaded (its sha256 is part of the identity: retrained weights reuse no cached result)."""
        if self.weights_path:
            return (Path(self.weights_path),)
        packaged = packaged_weights()
        return (Path(str(packaged)),) if packaged.is_file() else ()

    def setup(self, device: torch.device) -> None:
        self.net = TinyIQANet()
        if self.weights_path:
            path = Path(self.weights_path)
            if not path.is_file():
                raise WeightsError(f"tiny-iqa: weights_path {path} does not exist; give a file written by "
                                   f"scripts/train_embedded_metric.py, or leave weights_path unset for the "
                                   f"packaged weights")
            state = load_checkpoint(path)
            label = str(path)
        else:
            with resources.as_file(packaged_weights()) as path:
                if not path.is_file():
                    raise WeightsError(f"tiny-iqa: the packaged weights {path} are missing from this install; "
                                       f"reinstall iqadef or run scripts/train_embedded_metric.py")
                state = load_checkpoint(path)
            label = f"packaged {WEIGHTS_FILE}"
        if not isinstance(state, dict):
            raise WeightsError(f"tiny-iqa: {label} is not a state dict (got {type(state).__name__})")
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        load_state_dict_strict(self.net, state, f"tiny-iqa ({label})")

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.net]

    def score(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"tiny-iqa expects RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        return SCORE_CENTRE + SCORE_SCALE * self.net(preprocess(images.float()))


@hookimpl
def iqadef_register_metrics(register):
    register(TinyIQA)
