"""PGD with an L-inf bound and a random start (Madry et al., 2018)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient


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
        Param("step_size", float, None, nullable=True, low=0.0, help="step size; null means 2.5 * eps / steps"),
        Param("random_start", bool, True, help="start from a uniform random point of the eps-ball"),
    )
    eps: float
    steps: int
    step_size: float | None
    random_start: bool

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        delta = torch.zeros_like(images)
        if self.random_start:
            g = self.generator(seed, images.device)
            delta = (torch.rand(images.shape, generator=g, device=images.device, dtype=images.dtype) * 2 - 1) * self.eps
            delta = (images + delta).clamp(0.0, 1.0) - images
        point = torch.empty_like(images)
        for _ in range(self.steps):  # in place, in reused buffers: the same ops, no fresh tensor per step
            grad = loss_gradient(metric, torch.add(images, delta, out=point))
            delta.sub_(grad.sign_(), alpha=alpha).clamp_(-self.eps, self.eps)  # the L-inf projection
            torch.sub(torch.add(images, delta, out=point).clamp_(0.0, 1.0), images, out=delta)
        return (images + delta).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(PGDLinf)
