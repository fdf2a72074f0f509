"""Helpers shared by the gradient attacks (private: not a plugin module).

All attacks minimise :func:`iqadef.attack_loss` summed over the batch, so the gradient of each image
is that of its own loss and does not depend on which other images share the batch. Gradients are
taken with :func:`torch.autograd.grad` w.r.t. the images only, so the metric's parameters and their
``.grad`` are never touched.
"""

from __future__ import annotations

from typing import Callable

import torch

from iqadef import Metric, attack_loss

#: Per-image dimensions to reduce over in ``[B, C, H, W]`` tensors.
_IMAGE_DIMS = (1, 2, 3)


def loss_gradient(
    metric: Metric, images: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Gradient of the summed attack loss (plus ``extra(x)``, a scalar, if given) w.r.t. ``images``.

    The gradient is evaluated at ``images`` as given: callers that clamp before scoring pass the
    clamped tensor, which is how the reference code's in-place ``.data.clamp_`` behaves (the clamp
    is invisible to autograd, i.e. a straight-through estimate).
    """
    return loss_and_gradient(metric, images, extra)[1]


def loss_and_gradient(
    metric: Metric, images: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-image attack loss ``1 - f(x)/range`` (``[B]``, detached) and the gradient of its sum (plus
    ``extra(x)``) w.r.t. ``images``, from one forward and backward."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)  # autograd.grad does not write to x: no copy needed
        per_image = attack_loss(metric, x)
        loss = per_image.sum()
        if extra is not None:
            loss = loss + extra(x)
        (grad,) = torch.autograd.grad(loss, x)
    return per_image.detach().reshape(-1), (grad if torch.isfinite(grad).all() else torch.nan_to_num(grad))


def per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each image, shaped ``[B, 1, 1, 1]`` for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each image's perturbation back onto the L2 ball of radius ``eps`` if it is outside."""
    norm = per_image_norm(delta)
    factor = torch.where(norm > eps, eps / norm.clamp_min(1e-12), torch.ones_like(norm))
    return delta * factor


def per_image_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference of each image pair, shape ``[B]``."""
    return (a - b).pow(2).flatten(1).mean(dim=1).sqrt()


def adam_on_images(
    metric: Metric,
    images: torch.Tensor,
    *,
    lr: float,
    iters: int,
    extra: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Optimise the image pixels themselves with Adam, clamping to [0, 1] after every step.

    This is the common loop of the Korhonen et al., SSAH and Zhang et al. reference attacks:
    ``extra(x)`` adds a (summed) regulariser to the loss and ``mask`` multiplies the gradient.
    Adam works per element, so each image's trajectory is independent of the batch.
    """
    x = images.detach().clone()
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(iters):
        grad = loss_gradient(metric, x, extra)
        if mask is not None:
            grad = grad * mask
        x.grad = grad
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach().clamp(0.0, 1.0)
