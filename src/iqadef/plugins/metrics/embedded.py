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
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from iqadef import (
    FeatureSplit,
    Metric,
    Param,
    WeightsError,
    conv2d_norm_bound,
    conv_output_size,
    folded_conv_bn,
    hookimpl,
    load_checkpoint,
    load_state_dict_strict,
    resize_norm,
)

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Scores are ``SCORE_CENTRE + SCORE_SCALE * network output``; training targets span 10 (worst) .. 90 (clean).
SCORE_CENTRE = 50.0
SCORE_SCALE = 40.0
WEIGHTS_FILE = "tiny_iqa.pt"
#: ``c`` of :func:`mscn` and the floor added to its variance
MSCN_C, MSCN_FLOOR = 0.01, 1e-6
#: the floor added to a channel's variance before :func:`_mean_log_std` takes its log
LOG_STD_FLOOR = 1e-4
#: the luminance weights of :class:`TinyIQANet` (ITU-R BT.601)
LUMA = (0.299, 0.587, 0.114)


def packaged_weights() -> resources.abc.Traversable:
    """The weights file bundled in the package (``iqadef/data/weights/tiny_iqa.pt``)."""
    return resources.files("iqadef").joinpath("data", "weights", WEIGHTS_FILE)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Resize to 224x224 (bilinear, antialiased; aspect ratio not kept). Differentiable; each image is
    treated on its own, so a batch gives the per-image results. Normalisation happens in the network."""
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        images = F.interpolate(
            images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
    return images


def _blur_matrix(n: int, like: torch.Tensor, size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """The ``n x n`` matrix ``A`` with ``x @ A`` = Gaussian blur of ``x`` along its last axis (reflect
    padding). A matrix product is far faster on CPU, forwards and backwards, than a 1-channel conv."""
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = (g / g.sum()).view(1, 1, size)
    basis = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(1)
    return F.conv1d(F.pad(basis, (size // 2, size // 2), mode="reflect"), g).squeeze(1)


def mscn(luma: torch.Tensor, c: float = MSCN_C) -> torch.Tensor:
    """Mean-subtracted contrast-normalised luminance (as in BRISQUE, and CNNIQA's local normalisation):
    ``(Y - mu) / (sigma + c)`` over a 7x7 Gaussian window (sigma 7/6). It removes local brightness
    and contrast, so what is left is the local structure that noise, blur and compression change."""
    h, w = luma.shape[-2:]
    along_w, along_h = _blur_matrix(w, luma), _blur_matrix(h, luma)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return along_h.transpose(0, 1) @ (x @ along_w)

    mu = blur(luma)
    var = blur(luma * luma) - mu * mu
    return (luma - mu) / (var.clamp_min(0) + MSCN_FLOOR).sqrt().add(c)


def mscn_lipschitz(h: int, w: int, c: float = MSCN_C, floor: float = MSCN_FLOOR) -> float:
    """A provable upper bound of the L2 Lipschitz constant of :func:`mscn` on ``h x w`` maps (any input).

    With ``B`` the blur (rows of weights >= 0 summing to 1), ``mu = B Y``, ``v = B(Y^2) - mu^2``,
    ``s = sqrt(v + floor) >= sqrt(floor)``, the Jacobian is ``diag(1/(s + c)) (I - B) - diag((Y - mu)/(s + c)^2)
    Ds``. First term: ``||I - B||_2 / (c + sqrt(floor))``, ``||I - B||_2`` by the Schur test (its row and
    column sums of absolute values). Second: ``|ds_p| <= sqrt(v_p)/s_p sqrt((B dY^2)_p)`` (Cauchy-Schwarz
    with weights ``B_p.``) and ``|Y_p - mu_p| <= sqrt(v_p / B_pp)``, so the coefficient times ``|ds_p|`` is at
    most ``t/(t + c)^2 <= 1/(4c)`` (``t = sqrt(v_p)``) per ``sqrt((B dY^2)_p / B_pp)``; summed over p:
    ``sqrt(max column sum of B / min B_pp) / (4c)``."""
    along_w = _blur_matrix(w, torch.zeros((), dtype=torch.float64))  # x @ A: blurred[j] = sum_i x_i A_ij
    along_h = _blur_matrix(h, torch.zeros((), dtype=torch.float64))
    diag_min = float(torch.diagonal(along_h).min() * torch.diagonal(along_w).min())
    # the 2-D blur operator is the Kronecker product of the axes' (A^T); its column sums are A's row sums
    col_max = float(along_h.sum(1).max() * along_w.sum(1).max())
    row_max = float(along_h.sum(0).max() * along_w.sum(0).max())
    diag_max = float(torch.diagonal(along_h).max() * torch.diagonal(along_w).max())
    # |I - B|: rows 1 - B_pp + (row sum - B_pp); columns alike (B_pp <= 1)
    rows = max(abs(1 - diag_min) + row_max - diag_min, abs(1 - diag_max) + row_max - diag_max)
    cols = max(abs(1 - diag_min) + col_max - diag_min, abs(1 - diag_max) + col_max - diag_max)
    first = (rows * cols) ** 0.5 / (c + floor**0.5)
    second = (col_max / diag_min) ** 0.5 / (4 * c)
    return first + second


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _mean_log_std(features: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and log standard deviation.

    The std keeps the texture/noise energy that average pooling washes out; its log turns the ratios
    between scales (what blur, noise and contrast change, whatever the content) into differences
    that a linear layer can read.
    """
    flat = features.flatten(2)
    mean = flat.mean(dim=2)
    log_std = 0.5 * torch.log(flat.var(dim=2, unbiased=False) + LOG_STD_FLOOR)
    return torch.cat([mean, log_std], dim=1)


class TinyIQANet(nn.Module):
    """A 5-stage CNN (stride-2 stages, 224 -> 7), mean + log-std pooling of four stages, 2-layer head.

    Input: RGB in [0, 1] at 224x224 (see :func:`preprocess`); the stem sees the ImageNet-normalised
    RGB plus the MSCN map of the luminance (see :func:`mscn`). Returns the raw output (about -1 .. 1).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 80, 128)):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = _conv_bn_relu(4, w0, 2)  # 112
        self.stage1 = nn.Sequential(_conv_bn_relu(w0, w1, 2), _conv_bn_relu(w1, w1, 1))  # 56
        self.stage2 = nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2, 1))  # 28
        self.stage3 = nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3, 1))  # 14
        self.stage4 = nn.Sequential(_conv_bn_relu(w3, w4, 2), _conv_bn_relu(w4, w4, 1))  # 7
        self.head = nn.Sequential(nn.Linear(2 * (w0 + w1 + w2 + w4), 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``[B, 2 * (w0 + w1 + w2 + w4)]`` that the head reads (the backbone)."""
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        luma = LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]
        s0 = self.stem(torch.cat([(x - mean) / std, mscn(luma)], dim=1))
        s1 = self.stage1(s0)
        s2 = self.stage2(s1)
        s4 = self.stage4(self.stage3(s2))
        return torch.cat([_mean_log_std(f) for f in (s0, s1, s2, s4)], dim=1)

    def features_lipschitz(self, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> float:
        """A provable upper bound of the L2 Lipschitz constant of :meth:`features` on ``size`` inputs (eval
        mode). Chain: the stem's RGB part (ImageNet scaling folded into its kernel) plus its MSCN part
        (``||luma|| * mscn_lipschitz``), each convolution with its BatchNorm folded (conv2d_norm_bound), ReLU
        1-Lipschitz; a stage's mean/log-std pooling of ``N`` positions is ``sqrt((1 + (1/(2 sqrt(floor)))^2)
        / N)``-Lipschitz (the mean ``1/sqrt N``, the log-std ``sqrt(var)/(var + floor)/sqrt N``); the four
        pooled parts are orthogonal: ``L = sqrt(sum_k (P_k L_k)^2)``."""
        conv, bn = cast(nn.Conv2d, self.stem[0]), cast(nn.BatchNorm2d, self.stem[1])
        weight = folded_conv_bn(conv, bn)
        inv_std = torch.tensor(IMAGENET_STD, dtype=torch.float64).reciprocal().view(1, 3, 1, 1)
        padding = cast(tuple[int, int], conv.padding)
        rgb = conv2d_norm_bound(weight[:, :3] * inv_std, size, padding)
        luma_norm = sum(v * v for v in LUMA) ** 0.5
        lum = conv2d_norm_bound(weight[:, 3:], size, padding) * luma_norm * mscn_lipschitz(*size)
        lip, here = rgb + lum, conv_output_size(conv, size)
        per_stage = {"stem": (lip, here)}
        for name in ("stage1", "stage2", "stage3", "stage4"):
            for block in getattr(self, name):
                conv, bn = cast(nn.Conv2d, block[0]), cast(nn.BatchNorm2d, block[1])
                lip *= conv2d_norm_bound(folded_conv_bn(conv, bn), here, cast(tuple[int, int], conv.padding))
                here = conv_output_size(conv, here)
            per_stage[name] = (lip, here)
        pool = (1 + (0.5 / LOG_STD_FLOOR**0.5) ** 2) ** 0.5
        total = sum((pool * lip / (h * w) ** 0.5) ** 2 for key, (lip, (h, w)) in per_stage.items() if key != "stage3")
        return float(total**0.5)


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
    input_policy = (
        "resized to 224x224 (bilinear, antialiased; aspect ratio not kept); the network sees "
        "ImageNet-normalised RGB plus the MSCN (local contrast-normalised) luminance"
    )
    params = (
        Param(
            "weights_path",
            Path,
            None,
            help="a tiny_iqa.pt state dict to use instead of the packaged one (e.g. after retraining)",
        ),
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
                raise WeightsError(
                    f"tiny-iqa: weights_path {path} does not exist; give a file written by "
                    f"scripts/train_embedded_metric.py, or leave weights_path unset for the "
                    f"packaged weights"
                )
            state = load_checkpoint(path)
            label = str(path)
        else:
            with resources.as_file(packaged_weights()) as path:
                if not path.is_file():
                    raise WeightsError(
                        f"tiny-iqa: the packaged weights {path} are missing from this install; "
                        f"reinstall iqadef or run scripts/train_embedded_metric.py"
                    )
                state = load_checkpoint(path)
            label = f"packaged {WEIGHTS_FILE}"
        if not isinstance(state, dict):
            raise WeightsError(f"tiny-iqa: {label} is not a state dict (got {type(state).__name__})")
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        load_state_dict_strict(self.net, state, f"tiny-iqa ({label})")

    def feature_split(self, size: tuple[int, int]) -> FeatureSplit:
        """Backbone: resize + :meth:`TinyIQANet.features` (the 448 pooled features); head: the 2-layer MLP,
        scaled to scores. The bound is :meth:`TinyIQANet.features_lipschitz` (computed once: the weights do not
        change after setup) times the resize's exact norm for this image size."""
        size = (int(size[0]), int(size[1]))
        cache = self.__dict__.setdefault("_lipschitz", {})
        if "net" not in cache:  # the network sees 224x224 whatever the input: its bound is computed once
            was = self.net.training
            self.net.eval()
            cache["net"] = self.net.features_lipschitz()
            self.net.train(was)
        if size not in cache:
            cache[size] = resize_norm(size, (INPUT_SIZE, INPUT_SIZE)) * cache["net"]
        return FeatureSplit(
            backbone=lambda images: self.net.features(preprocess(images.float())),
            head=lambda features: SCORE_CENTRE + SCORE_SCALE * self.net.head(features).squeeze(1),
            lipschitz=cache[size],
            how="exact resize norm x stem (RGB + MSCN) x folded conv-BN symbols x pooling, docs/certified.md",
        )

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
