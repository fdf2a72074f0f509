"""MI-FGSM: I-FGSM with an accumulated (momentum) gradient (Dong et al., 2018)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from .ifgsm import ALPHA_PRESETS, iterate_sign_steps


class MIFGSM(Attack):
    """MI-FGSM: I-FGSM with momentum (decay 1.0), L-inf bound 10/255.

    Reference: ``methods/mifgsm/run.py`` of MSU_Metrics_Robustness_Benchmark, which accumulates the
    raw gradient (``g = grad + decay * g_prev``) without the L1 normalisation of the paper;
    ``normalize: true`` restores the paper's version.
    """

    name = "mifgsm"
    norm = "linf"
    params = (
        Param("eps", float, 10 / 255, help="L-inf bound of the perturbation", low=0.0, high=1.0),
        Param("iters", int, 10, help="number of steps", low=1),
        Param("alpha", float, 1 / 255, help="step size", low=0.0, presets=ALPHA_PRESETS),
        Param("decay", float, 1.0, help="momentum decay factor", low=0.0),
        Param(
            "normalize",
            bool,
            False,
            help="divide each gradient by its mean absolute value before accumulating (Dong et al.)",
        ),
    )
    eps: float
    iters: int
    alpha: float
    decay: float
    normalize: bool

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return iterate_sign_steps(
            metric, images, eps=self.eps, alpha=self.alpha, iters=self.iters, decay=self.decay, normalize=self.normalize
        )


@hookimpl
def iqadef_register_attacks(register):
    register(MIFGSM)
