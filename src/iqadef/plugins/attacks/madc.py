"""MADC: sign steps orthogonal to the RMSE gradient, pulled back inside an RMSE bound."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._common import loss_gradient, per_image_rmse


class MADC(Attack):
    """MADC: sign steps projected orthogonal to the RMSE gradient, stepping back inside RMSE <= 10/255.

    Reference: ``methods/madc/run.py`` of MSU_Metrics_Robustness_Benchmark (after Wang & Simoncelli's
    maximum differentiation competition). From the second iteration the metric gradient is
    projected orthogonal to the gradient of RMSE(x_adv, x), so the step changes the score while
    keeping the distortion level; if RMSE exceeds ``eps``, the image steps back by ``backstep``
    along ``sign(x_adv - x)`` until inside. Every image is handled on its own (the reference's
    projection and bound are over the whole batch).
    """

    name = "madc"
    norm = "rmse"
    params = (
        Param("eps", float, 10 / 255, help="RMSE bound to the clean image", low=0.0, high=1.0),
        Param("iters", int, 8, help="number of steps", low=1),
        Param(
            "lr",
            float,
            0.001,
            help="sign step size",
            low=0.0,
            presets=(1e-05, 2e-05, 5e-05, 0.0001, 0.00022, 0.00046, 0.001, 0.00215, 0.00464, 0.01),
        ),
        Param("backstep", float, 0.0005, help="step size of the pull back inside the RMSE bound", low=1e-6),
    )
    eps: float
    iters: int
    lr: float
    backstep: float

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        clean = images.detach()
        x = clean.clone()
        for i in range(self.iters):
            grad = loss_gradient(metric, x)
            if i > 0:
                # d RMSE / dx is proportional to (x - clean); the projection is scale-free.
                rmse_grad = x - clean
                dot = (rmse_grad * grad).flatten(1).sum(dim=1)
                sq = (rmse_grad * rmse_grad).flatten(1).sum(dim=1)
                coeff = torch.where(sq > 0, dot / sq.clamp_min(1e-30), torch.zeros_like(sq))
                grad = grad - coeff.view(-1, 1, 1, 1) * rmse_grad
            x = x - self.lr * grad.sign()
            x = self._pull_back(x, clean)
            x = x.clamp(0.0, 1.0)
        return x.clamp(0.0, 1.0)

    def _pull_back(self, x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Step the images whose RMSE exceeds eps back towards ``clean`` until they are inside."""
        # Every back step moves each differing value by `backstep` towards clean (or past it by less
        # than `backstep`), so this many steps always suffice.
        limit = int((x - clean).abs().max().item() / self.backstep) + 2
        for _ in range(limit):
            outside = per_image_rmse(x, clean) > self.eps
            if not bool(outside.any()):
                break
            stepped = (x - self.backstep * (x - clean).sign()).clamp(0.0, 1.0)
            x = torch.where(outside.view(-1, 1, 1, 1), stepped, x)
        # Only reachable when eps < backstep: shrink the remaining excess radially.
        rmse = per_image_rmse(x, clean).view(-1, 1, 1, 1)
        shrink = torch.where(rmse > self.eps, self.eps / rmse.clamp_min(1e-12), torch.ones_like(rmse))
        return clean + (x - clean) * shrink


@hookimpl
def iqadef_register_attacks(register):
    register(MADC)
