"""Per-image full-reference measures shared by the score plugins (not a plugin itself).

Conventions follow the reference code (scikit-image on float images in [0, 1]):
PSNR with data range 1 (+inf for identical images, as ``skimage.metrics.peak_signal_noise_ratio``), SSIM
with scikit-image's defaults (7×7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the
valid region and over the RGB channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The PSNR wianluna/adversarial_purification ``test.py`` uses when the attacked image equals the clean one.
STUDY_IDENTICAL_PSNR_DB = 150.0

#: The image pairs measured, as column suffixes: clean x, attacked x_a, D(x), D(x_a).
PAIRS = ("x_xa", "x_dx", "x_dxa", "xa_dxa", "dx_dxa")


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.detach().to(torch.float64).flatten(1)


def match_size(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``images`` resized to ``reference``'s height and width (bilinear, not antialiased), if they differ.

    This is what the reference does before comparing a defended image with an undefended one:
    ``torchvision.transforms.Resize`` to the clean image's size (defence_evaluate.py), which in its
    torchvision 0.15 did not antialias tensors (it matters only when the defended image is the larger).
    """
    if images.shape[-2:] == reference.shape[-2:]:
        return images
    return F.interpolate(images.detach().float(), size=tuple(reference.shape[-2:]), mode="bilinear",
                         align_corners=False).clamp(0.0, 1.0)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``[B]``."""
    return (_flat(a) - _flat(b)).pow(2).mean(dim=1)


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, ``[B]``."""
    return (_flat(a) - _flat(b)).abs().mean(dim=1)


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest absolute pixel difference per image, ``[B]``."""
    return (_flat(a) - _flat(b)).abs().amax(dim=1)


def psnr_from_mse(err: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / MSE)`` (data range 1); +inf where MSE is 0, as scikit-image gives (the aggregation
    leaves such values out of means and counts them, see :func:`iqadef.core.scores.aggregate`)."""
    return 10.0 * torch.log10(1.0 / err)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB, data range 1; +inf for identical images."""
    return psnr_from_mse(mse(a, b))


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """SSIM per image as ``skimage.metrics.structural_similarity(..., channel_axis=2, data_range=1)``.

    Uniform ``win_size`` window, sample covariance (``N / (N - 1)``), mean over the window positions
    that fit inside the image, then over channels. Images smaller than the window use the largest odd
    window that fits (scikit-image would refuse them).
    """
    # It runs for every grid cell, so: float32, and one separable box filter over the five moments at
    # once, as two 1-D convolutions (~3x cheaper than five float64 7x7 pools). Both images are shifted by a common per-channel
    # constant first, which leaves (co)variances unchanged and keeps E[x^2] - E[x]^2 free of float32
    # cancellation (agrees with scikit-image to ~1e-5).
    x = a.detach().float()
    y = b.detach().float()
    shift = 0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True))
    x, y = x - shift, y - shift
    win = min(win_size, x.shape[-1], x.shape[-2])
    if win % 2 == 0:
        win -= 1
    if win < 1:
        raise ValueError(f"SSIM needs images of at least 1x1 pixels, got {tuple(x.shape)}")
    n = win * win
    cov_norm = n / (n - 1) if n > 1 else 1.0
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    channels = moments.shape[1]
    row = torch.full((channels, 1, 1, win), 1.0 / win, dtype=moments.dtype, device=moments.device)
    moments = F.conv2d(F.conv2d(moments, row, groups=channels), row.transpose(2, 3), groups=channels)  # valid region
    ux, uy, uxx, uyy, uxy = moments.chunk(5, dim=1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    ux, uy = ux + shift, uy + shift
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.double().mean(dim=(2, 3)).mean(dim=1)


def pair_images(cells) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The five image pairs of a :class:`~iqadef.core.cells.CellBatch`, sizes reconciled.

    A defended image compared with x or x_a is resized back to x's size; D(x) and D(x_a) are compared
    directly (D(x_a) is resized to D(x)'s size only if the two differ).
    """
    x, xa, dx, dxa = cells.clean, cells.adv, cells.def_clean, cells.def_adv
    return {
        "x_xa": (x, match_size(xa, x)),
        "x_dx": (x, match_size(dx, x)),
        "x_dxa": (x, match_size(dxa, x)),
        "xa_dxa": (xa, match_size(dxa, xa)),
        "dx_dxa": (dx, match_size(dxa, dx)),
    }


def as_float_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values).detach().to(torch.float64).cpu().reshape(-1)


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with NaN where ``den`` is 0 (instead of ±inf)."""
    out = num / den
    return torch.where(den == 0, torch.full_like(out, math.nan), out)
