"""AMI-FGSM: the benchmark's momentum attack that steps the image itself by eps/iters."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient


class AMIFGSM(Attack):
    """AMI-FGSM: momentum sign steps of eps/iters on the image, bounded by construction (no projection).

    Reference: ``methods/amifgsm/run.py`` of MSU_Metrics_Robustness_Benchmark. Unlike I-FGSM there
    is no perturbation variable and no projection: the image is updated in place
    (``x -= eps/iters * sign(g)``, clamped to [0, 1]) with momentum ``g = grad + decay * g_prev``.
    ``iters`` steps of ``eps/iters`` can move a pixel by at most ``eps``, so the L-inf bound holds
    by construction rather than by clipping.
    """

    name = "amifgsm"
    norm = "linf"
    params = (
        Param("eps", float, 10 / 255, help="L-inf budget; the step is eps/iters", low=0.0, high=1.0),
        Param("iters", int, 10, help="number of steps", low=1),
        Param("decay", float, 1.0, help="momentum decay factor", low=0.0),
    )
    eps: float
    iters: int
    decay: float

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        step = self.eps / self.iters
        x = images.detach().clone()
        momentum = torch.zeros_like(images)
        for _ in range(self.iters):
            momentum = loss_gradient(metric, x) + self.decay * momentum
            x = (x - step * momentum.sign()).clamp(0.0, 1.0)
        return x


@hookimpl
def iqadef_register_attacks(register):
    register(AMIFGSM)
