"""APGD for a scalar score (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Algorithm 1), L-inf and L2.

The loss is iqadef's :func:`~iqadef.attack_loss` (the score moved in the metric's better direction), so no
step size is tuned: it starts at ``2 eps`` and halves at checkpoints where the search stalls. Details the
paper leaves open follow ``fra31/auto-attack`` ``autoattack/autopgd_base.py``; differences: docs/fidelity.md.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_and_gradient, per_image_norm

#: Default budgets: the L-inf one of the brief's threat model (8/255), the usual L2 one (AutoAttack's 0.5).
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD checks its progress: ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (in whole percent, so exact)."""
    marks, before, p = [], 0, 22
    while p <= 100:
        w = -(-p * steps // 100)
        if w >= 1 and (not marks or w > marks[-1]):
            marks.append(w)
        before, p = p, p + max(p - before - 3, 6)
    return marks


def image_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of image ``index`` (its random starts): one per image, so that an image's result
    does not depend on the batch it is in."""
    digest = hashlib.sha256(f"apgd:{int(seed)}:{int(index)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g


def random_start(x: torch.Tensor, eps: float, norm: str, gens: list[torch.Generator]) -> torch.Tensor:
    """A start on the sphere of radius eps around each image (autopgd_base: uniform noise scaled to L-inf
    norm eps, or Gaussian noise scaled to L2 norm eps), clamped to [0, 1]."""
    shape = tuple(x.shape[1:])
    if norm == "linf":
        t = torch.stack([torch.rand(shape, generator=g) * 2 - 1 for g in gens]).to(x)
        scale = t.abs().flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    else:
        t = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(x)
        scale = per_image_norm(t)
    return (x + eps * t / (scale + 1e-12)).clamp(0.0, 1.0)


def project(x: torch.Tensor, point: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``point`` projected onto the eps-ball around ``x`` and the [0, 1] box."""
    if norm == "linf":
        return torch.min(torch.max(point, x - eps), x + eps).clamp(0.0, 1.0)
    delta = point - x
    length = per_image_norm(delta)
    return (x + delta / (length + 1e-12) * length.clamp(max=eps)).clamp(0.0, 1.0)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-descent direction of the loss for a unit step in ``norm``."""
    if norm == "linf":
        return -grad.sign()
    return -grad / (per_image_norm(grad) + 1e-12)


def apgd_run(
    metric: Metric,
    x: torch.Tensor,
    start: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    rho: float,
    alpha: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of Algorithm 1 from ``start``: the best point of each image and its loss (lower is better).

    Step ``eta = 2 eps`` per image; ``z = P(x_k + eta * d(grad))``, ``x_{k+1} = P(x_k + alpha (z - x_k) +
    (1 - alpha)(x_k - x_{k-1}))`` (no momentum at the first step). At each checkpoint ``w_j`` an image halves
    its step and goes back to its best point (and that point's gradient and loss) if the loss went down in at
    most ``rho`` of the steps since ``w_{j-1}`` (condition 1), or if its step was not halved at ``w_{j-1}`` and
    its best loss has not improved since then (condition 2)."""
    batch = x.shape[0]
    view = (-1, 1, 1, 1)
    marks = set(checkpoints(steps))
    current = start
    loss, grad = loss_and_gradient(metric, current)
    best_x, best_loss, best_grad = current.clone(), loss.clone(), grad.clone()
    eta = torch.full((batch,), 2.0 * eps, dtype=x.dtype, device=x.device)
    previous = current
    last_loss = loss
    decreases = torch.zeros(batch, dtype=torch.int64, device=x.device)
    since = 0  # steps since the last checkpoint
    halved_last = torch.ones(batch, dtype=torch.bool, device=x.device)
    best_at_last = best_loss.clone()
    for k in range(steps):
        z = project(x, current + eta.view(view) * ascent_direction(grad, norm), eps, norm)
        if k == 0:  # the first step has no momentum (Algorithm 1, line 2)
            moved = z
        else:
            moved = project(x, current + alpha * (z - current) + (1 - alpha) * (current - previous), eps, norm)
        previous, current = current, moved
        loss, grad = loss_and_gradient(metric, current)
        decreases += (loss < last_loss).to(torch.int64)
        last_loss = loss
        since += 1
        improved = loss < best_loss
        best_x = torch.where(improved.view(view), current, best_x)
        best_grad = torch.where(improved.view(view), grad, best_grad)
        best_loss = torch.where(improved, loss, best_loss)
        if k + 1 in marks:
            stalled = decreases <= rho * since  # condition 1
            stalled |= ~halved_last & (best_at_last <= best_loss)  # condition 2
            eta = torch.where(stalled, eta / 2, eta)
            current = torch.where(stalled.view(view), best_x, current)
            grad = torch.where(stalled.view(view), best_grad, grad)
            last_loss = torch.where(stalled, best_loss, last_loss)  # x_{k+1} is now the best point
            halved_last, best_at_last = stalled, best_loss.clone()
            decreases.zero_()
            since = 0
    return best_x, best_loss


def apgd(
    metric: Metric, images: torch.Tensor, *, eps: float, norm: str, steps: int, restarts: int, rho: float, seed: int
) -> torch.Tensor:
    """The best point over ``restarts`` runs of :func:`apgd_run` from random starts, per image."""
    x = images.detach()
    gens = [image_generator(seed, i) for i in range(x.shape[0])]
    best_x, best_loss = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
    for _ in range(restarts):
        run_x, run_loss = apgd_run(
            metric, x, random_start(x, eps, norm, gens), eps=eps, norm=norm, steps=steps, rho=rho
        )
        better = run_loss.to(best_loss) < best_loss
        best_x = torch.where(better.view(-1, 1, 1, 1), run_x, best_x)
        best_loss = torch.where(better, run_loss.to(best_loss), best_loss)
    return best_x


class APGD(Attack):
    """APGD (Croce & Hein 2020) on the score: parameter-free step size, momentum 0.75, checkpoints, restarts.

    Not in the reference study; the adaptive white-box attack of robustness evaluations (AutoAttack).
    ``eps`` null: 8/255 for ``linf``, 0.5 for ``l2`` (absolute L2 norm over 3*H*W values, as ``pgd-l2``).
    """

    name = "apgd"
    norm = "linf"
    params = (
        Param(
            "eps", float, None, nullable=True, low=0.0, help="bound of the perturbation; null: 8/255 (linf) or 0.5 (l2)"
        ),
        Param("norm", str, "linf", choices=("linf", "l2"), help="the threat model's norm"),
        Param("steps", int, 100, help="iterations per restart", low=1),
        Param("restarts", int, 1, help="runs from independent random starts; the best point is kept", low=1),
        Param(
            "rho",
            float,
            0.75,
            low=0.0,
            high=1.0,
            help="halve the step when the loss fell in at most this share of the steps since the last checkpoint",
        ),
    )
    eps: float | None
    steps: int
    restarts: int
    rho: float

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.norm]

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return apgd(
            metric,
            images,
            eps=self.eps,
            norm=self.norm,
            steps=self.steps,
            restarts=self.restarts,
            rho=self.rho,
            seed=seed,
        )


@hookimpl
def iqadef_register_attacks(register):
    register(APGD)
