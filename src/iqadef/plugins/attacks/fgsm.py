"""FGSM: a single signed-gradient step of size eps (Goodfellow et al., 2015)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient


class FGSM(Attack):
    """FGSM: one signed-gradient step of size eps (L-inf), the fastest white-box baseline.

    Reference: ``methods/std-fgsm/run.py`` of MSU_Metrics_Robustness_Benchmark
    (``x - eps * sign(grad)``, then clamp to [0, 1]).
    """

    name = "fgsm"
    norm = "linf"
    params = (
        Param(
            "eps",
            float,
            10 / 255,
            help="step size = L-inf bound",
            low=0.0,
            high=1.0,
            presets=(1 / 255, 0.01438, 0.02484, 0.03529, 0.04575, 0.05621, 0.06667, 0.07712, 0.08758, 25 / 255),
        ),
    )
    eps: float

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        grad = loss_gradient(metric, images)
        return (images - self.eps * grad.sign()).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(FGSM)
