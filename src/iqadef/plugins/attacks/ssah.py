"""SSAH: Adam on the pixels with a penalty on changes to the low-frequency (Haar LL) band."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iqadef import Attack, Metric, Param, hookimpl

from ._common import adam_on_images


def pad_to_even(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad the bottom row / right column of an odd-sized batch, as the reference does before
    its attack loop (``metrics/methods/ssah/run.py``); even sizes are returned unchanged."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, w % 2, 0, h % 2)) if h % 2 or w % 2 else images


def haar_low_frequency(images: torch.Tensor) -> torch.Tensor:
    """The Haar LL band mapped back to the image grid: each 2x2 block replaced by its mean.

    This is what the reference's ``idwt(dwt(x))`` with the Haar wavelet computes (orthonormal
    Haar: LL = block sum / 2, inverse spreads LL / 2 to the four pixels). Odd sizes are first
    zero-padded with :func:`pad_to_even` (the result keeps the padded, even size).
    """
    return F.interpolate(F.avg_pool2d(pad_to_even(images), 2), scale_factor=2, mode="nearest")


class SSAH(Attack):
    """SSAH: Adam (lr 0.001, 10 iterations) on the adversarial loss + 0.1 x SmoothL1 of the Haar low band.

    Reference: ``metrics/methods/ssah/run.py`` of adversarial-defenses-for-iqa (after Luo et al.,
    "Frequency-driven imperceptible adversarial attack on semantic similarity", CVPR 2022): the
    fidelity term, SmoothL1 summed over pixels between the low-frequency bands of the attacked and
    the clean image, keeps the perturbation in high frequencies. Unbounded. An odd-sized image is
    zero-padded to even size first and the padded image is what Adam optimises and the metric
    scores; the result is cropped back to the input size, as the reference returns it.
    """

    name = "ssah"
    version = "2"  # 2: matches the reference (see docs/fidelity.md)
    norm = None
    params = (
        Param(
            "lr",
            float,
            0.001,
            help="Adam learning rate",
            low=0.0,
            presets=(0.0001, 0.00017, 0.00028, 0.00046, 0.00077, 0.00129, 0.00215, 0.00359, 0.00599, 0.01),
        ),
        Param("iters", int, 10, help="number of Adam steps", low=1),
        Param("lambda_lf", float, 0.1, help="weight of the low-frequency fidelity term", low=0.0),
        Param(
            "score_unpadded",
            bool,
            False,
            help="odd sizes: optimise and score the image at its own size, padding only inside the "
            "low-frequency term (the reference scores the zero-padded image)",
        ),
    )
    lr: float
    iters: int
    lambda_lf: float
    score_unpadded: bool

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        h, w = images.shape[-2:]
        start = images.detach() if self.score_unpadded else pad_to_even(images.detach())
        clean_low = haar_low_frequency(start)

        def fidelity(x: torch.Tensor) -> torch.Tensor:
            return self.lambda_lf * F.smooth_l1_loss(haar_low_frequency(x), clean_low, reduction="sum")

        adversarial = adam_on_images(metric, start, lr=self.lr, iters=self.iters, extra=fidelity)
        return adversarial[..., :h, :w].contiguous()


@hookimpl
def iqadef_register_attacks(register):
    register(SSAH)
