"""PGD with an L2 bound and a random start (Madry et al., 2018)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient, per_image_norm, project_l2


class PGDL2(Attack):
    """PGD (L2): random start in the L2 ball, normalised-gradient steps of 2.5*eps/steps, projection.

    ``eps`` is the absolute L2 norm of each image's perturbation over all its values (3.0 by
    default, the usual ImageNet 224x224 budget; it does not scale with the image size, so use
    e.g. ``eps = rmse * sqrt(3*H*W)`` for a per-pixel budget).
    """

    name = "pgd-l2"
    norm = "l2"
    params = (
        Param("eps", float, 3.0, help="L2 bound of each image's perturbation (absolute, over 3*H*W values)", low=0.0),
        Param("steps", int, 10, help="number of steps", low=1),
        Param(
            "step_size", float, None, nullable=True, low=0.0, help="step size (L2 length); null means 2.5 * eps / steps"
        ),
        Param("random_start", bool, True, help="start from a random point of the L2 ball"),
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
            direction = torch.randn(images.shape, generator=g, device=images.device, dtype=images.dtype)
            radius = (
                torch.rand((images.shape[0], 1, 1, 1), generator=g, device=images.device, dtype=images.dtype) * self.eps
            )
            delta = direction / per_image_norm(direction).clamp_min(1e-12) * radius
            delta = (images + delta).clamp(0.0, 1.0) - images
        for _ in range(self.steps):
            grad = loss_gradient(metric, images + delta)
            step = grad / per_image_norm(grad).clamp_min(1e-12)
            delta = project_l2(delta - alpha * step, self.eps)
            delta = (images + delta).clamp(0.0, 1.0) - images  # clamping only shrinks each component
        return (images + delta).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(PGDL2)
