"""stAdv: a smooth per-pixel flow field that moves pixels instead of changing their values (Xiao et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iqadef import Attack, Metric, Param, hookimpl

#: The learning rates the benchmark sweeps (ADI ``metrics/methods/utils/attack_presets.json``, presets -3..9).
LR_PRESETS = (
    0.02154,
    0.03594,
    0.05995,
    0.1,
    0.16681,
    0.27826,
    0.46416,
    0.77426,
    1.29155,
    2.15443,
    3.59381,
    5.99484,
    10.0,
)


def flow_warp(images: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """Sample ``images`` ``[B, C, H, W]`` bilinearly at ``pixel + flow`` (``flows`` ``[B, 2, H, W]``: dy, dx).

    The reference's ``flow_st`` (ADI ``metrics/methods/stadv/run.py``), kept as own code rather than
    ``grid_sample`` for its exact arithmetic and gradients: the sampling position is clamped to the
    image, the left/top corner index to ``W-2``/``H-2`` (so the last row and column interpolate
    between the last two pixels), the grid is float32 whatever the flow's dtype.
    """
    _, _, h, w = images.shape
    rows, cols = torch.meshgrid(
        torch.arange(h, device=images.device), torch.arange(w, device=images.device), indexing="ij"
    )
    grid = torch.stack((rows, cols)).unsqueeze(0).float() + flows
    gx = grid[:, 1].clamp(0.0, w - 1.0).float()
    gy = grid[:, 0].clamp(0.0, h - 1.0).float()
    x0 = gx.floor().long().clamp(0, w - 2)
    x1 = (gx.floor().long() + 1).clamp(0, w - 1)
    y0 = gy.floor().long().clamp(0, h - 2)
    y1 = (gy.floor().long() + 1).clamp(0, h - 1)
    b = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return images[b, :, y, x].permute(0, 3, 1, 2).contiguous()  # [B, H, W, C] -> [B, C, H, W]

    x0f, x1f, y0f, y1f = x0.float(), x1.float(), y0.float(), y1.float()
    wa = ((x1f - gx) * (y1f - gy)).unsqueeze(1)
    wb = ((x1f - gx) * (gy - y0f)).unsqueeze(1)
    wc = ((gx - x0f) * (y1f - gy)).unsqueeze(1)
    wd = ((gx - x0f) * (gy - y0f)).unsqueeze(1)
    return (wa * at(y0, x0) + wb * at(y1, x0) + wc * at(y0, x1) + wd * at(y1, x1)).float()


def flow_smoothness(flows: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """The reference's ``flow_loss``: squared differences of each flow vector to its four diagonal
    neighbours (zero outside the image), plus ``epsilon`` per term, summed (no square root)."""
    padded = F.pad(flows, (1, 1, 1, 1), mode="constant", value=0)
    loss = 0
    for shifted in (padded[:, :, 2:, 2:], padded[:, :, 2:, :-2], padded[:, :, :-2, 2:], padded[:, :, :-2, :-2]):
        loss = loss + torch.sum(
            torch.square(flows[:, 1] - shifted[:, 1]) + torch.square(flows[:, 0] - shifted[:, 0]) + epsilon
        )
    return loss.float()


class StAdv(Attack):
    """stAdv: L-BFGS on a per-pixel flow field; loss = 50 * s_o/(f + s_o) + 1e-5 * flow smoothness.

    Reference: ADI ``metrics/methods/stadv/run.py``: the flow (float64, zeros) is optimised by
    ``torch.optim.LBFGS(lr, max_iter=1, max_eval=25)`` for 3 steps; the adversarial term is
    ``s_o / (f(x_adv) + s_o)`` with ``s_o = 1.5 * range`` (lower-is-better metrics: ``range - f`` and
    ``s_o = 0.1 * range``); ``x_adv`` is the warped image. Each image is attacked on its own (the
    reference runs batches of one; L-BFGS' history would couple the images of a batch). Unbounded
    (a spatial attack: no L-p budget).
    """

    name = "stadv"
    params = (
        Param("lr", float, 2.5, help="L-BFGS learning rate", low=0.0, presets=LR_PRESETS),
        Param("iters", int, 3, help="L-BFGS steps (one iteration each)", low=1),
        Param("alpha", float, 50.0, help="weight of the adversarial term", low=0.0),
        Param("beta", float, 1e-5, help="weight of the flow smoothness term", low=0.0),
    )
    lr: float
    iters: int
    alpha: float
    beta: float

    def adversarial_term(self, metric: Metric, images: torch.Tensor) -> torch.Tensor:
        score = metric.score(images)
        if metric.higher_is_better:
            other = metric.span * 1.5
        else:
            score, other = metric.span - score, metric.span * 0.1
        return (other / (score + other)).sum()

    def _one(self, metric: Metric, image: torch.Tensor) -> torch.Tensor:
        flows = torch.zeros(
            (1, 2) + tuple(image.shape[-2:]), dtype=torch.float64, device=image.device, requires_grad=True
        )
        optimizer = torch.optim.LBFGS([flows], lr=self.lr, max_iter=1, max_eval=25)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = self.alpha * self.adversarial_term(
                    metric, flow_warp(image, flows)
                ) + self.beta * flow_smoothness(flows)
                loss.backward()
            return loss

        for _ in range(self.iters):
            optimizer.step(closure)
        with torch.no_grad():
            return flow_warp(image, flows)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        return torch.cat([self._one(metric, images[i : i + 1]) for i in range(images.shape[0])]).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_attacks(register):
    register(StAdv)
