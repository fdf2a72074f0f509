"""I-FGSM: iterated signed-gradient steps projected to an L-inf ball (Kurakin et al., 2017)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient

#: The step sizes the reference study sweeps (attack_presets.json, presets 0..9).
ALPHA_PRESETS = (0.0003921568627, 0.00065, 0.00109, 0.00182, 0.00304, 0.00506, 0.00845, 0.01409, 0.02351, 0.03921568627)


def iterate_sign_steps(
    metric: Metric,
    images: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    iters: int,
    decay: float = 0.0,
    normalize: bool = False,
) -> torch.Tensor:
    """The I-FGSM / MI-FGSM loop of the reference code.

    The state is an additive perturbation ``p`` clipped to [-eps, eps] (not to the image box); the
    metric is evaluated at ``clamp(x + p, 0, 1)`` and the gradient there is applied to ``p``
    (the reference clamps ``.data`` in place, which autograd does not see). ``decay > 0`` adds
    momentum ``g = grad + decay * g_prev``; ``normalize`` divides ``grad`` by its mean absolute value
    per image first (Dong et al.'s MI-FGSM; the reference code does not).
    """
    images = images.detach()
    p = torch.zeros_like(images)
    point = torch.empty_like(images)
    momentum = torch.zeros_like(images) if decay else None
    for _ in range(iters):  # in-place updates: on a small metric, fresh tensors per step cost ~10%
        grad = loss_gradient(metric, torch.add(images, p, out=point).clamp_(0.0, 1.0))
        if normalize:
            grad = grad / grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        if momentum is not None:
            grad = momentum.mul_(decay).add_(grad)
        p.sub_(grad.sign(), alpha=alpha).clamp_(-eps, eps)
    return (images + p).clamp(0.0, 1.0)


class IFGSM(Attack):
    """I-FGSM: 10 signed-gradient steps of 1/255 inside an L-inf ball of 10/255.

    Reference: ``methods/ifgsm/run.py`` of MSU_Metrics_Robustness_Benchmark.
    """

    name = "ifgsm"
    norm = "linf"
    params = (
        Param("eps", float, 10 / 255, help="L-inf bound of the perturbation", low=0.0, high=1.0),
        Param("iters", int, 10, help="number of steps", low=1),
        Param("alpha", float, 1 / 255, help="step size", low=0.0, presets=ALPHA_PRESETS),
    )
    eps: float
    iters: int
    alpha: float

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return iterate_sign_steps(metric, images, eps=self.eps, alpha=self.alpha, iters=self.iters)


@hookimpl
def iqadef_register_attacks(register):
    register(IFGSM)
