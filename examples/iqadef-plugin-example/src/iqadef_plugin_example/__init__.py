"""An example third-party iqadef plugin: one metric, one attack and one defence, each a real (small) method.

* ``colourfulness`` (metric): Hasler and Suesstrunk, "Measuring colourfulness in natural images" (SPIE 2003),
  a differentiable no-reference measure, so attacks can push it;
* ``l2-step`` (attack): one normalised-gradient step of L2 size ``eps`` (the L2 counterpart of FGSM),
  repeated ``steps`` times and projected back to the ball;
* ``bit-depth`` (defence): feature squeezing, Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial
  Examples in Deep Neural Networks" (NDSS 2018): colour depth cut so small perturbations fall inside one level.
"""

from __future__ import annotations

import torch

from iqadef import Attack, Defence, Metric, Param, attack_loss, hookimpl


class Colourfulness(Metric):
    """Colourfulness (Hasler & Suesstrunk, 2003) on the 0..255 scale: spread plus 0.3 x mean of the opponent
    channels rg = R - G, yb = (R + G) / 2 - B; differentiable."""

    name = "colourfulness"
    version = "1"
    higher_is_better = True  # more colourful reads as better: the direction attacks push
    range = (0.0, 150.0)  # about the span of natural photographs (the paper's "extremely colourful" is > 109)
    input_policy = "any size (whole image, no resize)"

    def score(self, images: torch.Tensor) -> torch.Tensor:
        r, g, b = (images * 255).unbind(dim=1)
        rg, yb = r - g, 0.5 * (r + g) - b
        spread = (rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False) + 1e-6).sqrt()
        mean = (rg.flatten(1).mean(dim=1) ** 2 + yb.flatten(1).mean(dim=1) ** 2 + 1e-6).sqrt()
        return spread + 0.3 * mean


class L2Step(Attack):
    """Normalised-gradient steps of L2 size eps/steps on attack_loss, projected to the L2 ball of radius eps
    (per image, in [0, 1] pixels) and the image box."""

    name = "l2-step"
    version = "1"
    norm = "l2"
    params = (
        Param("eps", float, 1.0, "L2 radius of the perturbation (pixels in [0, 1])", low=0.0),
        Param("steps", int, 5, "number of steps", low=1),
    )

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        x = images.clone()
        for _ in range(self.steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(attack_loss(metric, x).sum(), x)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = x.detach() - self.eps / self.steps * grad / norm  # descend the loss: the score goes up
            delta = x - images
            scale = (self.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
            x = (images + delta * scale).clamp(0.0, 1.0)
        return x


class BitDepthReduction(Defence):
    """Feature squeezing: keep `bits` bits per channel (Xu et al., 2018); straight-through gradient."""

    name = "bit-depth"
    version = "1"
    params = (Param("bits", int, 5, "bits kept per channel", low=1, high=8, presets=(1, 2, 3, 4, 5, 6, 7)),)
    # Rounding has zero gradient almost everywhere, so adaptive attacks use BPDA with identity
    # (the default estimate_forward of iqadef.Defence).
    differentiable = False

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(images * levels) / levels


@hookimpl
def iqadef_register_metrics(register):
    register(Colourfulness)


@hookimpl
def iqadef_register_attacks(register):
    register(L2Step)


@hookimpl
def iqadef_register_defences(register):
    register(BitDepthReduction)
