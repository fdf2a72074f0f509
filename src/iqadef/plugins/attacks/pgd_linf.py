"""PGD with an L-inf bound and a random start (Madry et al., 2018)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient, project_linf


class PGDLinf(Attack):
    """PGD (L-inf): random start in the eps-ball, signed steps of 2.5*eps/steps, projection (Madry et al.).

    Not in the reference study; a standard stronger baseline. The start is uniform in
    [-eps, eps] drawn from the run's seed.
    """

    name = "pgd-linf"
    norm = "linf"
    params = (
        Param("eps", float, 10 / 255, help="L-inf bound of the perturbation", low=0.0, high=1.0),
        Param("steps", int, 10, help="number of steps", low=1),
        Param("step_size", float, None, nullable=True, low=0.0,
              help="step size; null means 2.5 * eps / steps"),
        Param("random_start", bool, True, help="start from a uniform random point of the eps-ball"),
    )

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        delta = torch.zeros_like(images)
        if self.random_start:
            g = self.generator(seed, images.device)
            delta = (torch.rand(images.shape, generator=g, device=images.device, dtype=images.dtype) * 2 - 1) * self.eps
            delta = (images + delta).clamp(0.0, 1.0) - images
        for _ in range(self.steps):
            grad = loss_gradient(metric, images + delta)
            delta = project_linf(delta - alpha * grad.sign(), self.eps)
            delta = (images + delta).clamp(0.0, 1.0) - images
        return (images + delta).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(PGDLinf)
