"""AdvCF: an adversarial per-channel colour curve (piecewise-linear, monotone)."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, attack_loss, hookimpl


def apply_colour_curve(images: torch.Tensor, pieces_weights: torch.Tensor) -> torch.Tensor:
    """Map every channel of every image through its piecewise-linear curve.

    ``pieces_weights`` is ``[B, 3, P]`` and non-negative: piece ``k`` covers input values
    ``[k/P, (k+1)/P]`` and its slope is proportional to ``weights[k]``; the curve is normalised to
    map 0 to 0 and 1 to 1. Equal weights give the identity. This is the reference's
    ``sum_k clamp(x - k/P, 0, 1/P) * w_k * P / sum(w)``, computed with one gather instead of P passes.
    """
    b, c, h, w = images.shape
    pieces = pieces_weights.shape[-1]
    total = pieces_weights.sum(dim=-1, keepdim=True) + 1e-30
    before = torch.cumsum(pieces_weights, dim=-1) - pieces_weights  # weight of the pieces below k
    scaled = images.reshape(b, c, h * w) * pieces
    index = scaled.floor().clamp(0, pieces - 1).long()
    out = torch.gather(before, 2, index) + (scaled - index) * torch.gather(pieces_weights, 2, index)
    return (out / total).reshape(b, c, h, w)


def clip_like_masked_assignment(images: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] as the reference's ``adv[adv > 1] = 1; adv[adv < 0] = 0`` does.

    Values equal to 0 or 1 keep gradient 1 (only values strictly outside are replaced); PyTorch's
    ``clamp`` passes gradient 0 at the bounds, which silences every pixel a curve maps exactly to 0
    or 1 -- common once Adam has driven some curve weights to 0.
    """
    return images.masked_fill(images > 1, 1.0).masked_fill(images < 0, 0.0)


class AdvCF(Attack):
    """AdvCF: per-channel monotone colour curves (64 pieces) optimised with Adam; keeps the best result.

    After Zhao et al., "Adversarial color enhancement" (BMVC 2021). Reference: the IQA port of the
    filter (a ``Color`` attacker; ``adv-cf`` in adversarial-defenses-for-iqa's attack_presets.json)
    and ``defenses/reversed_adv_cf/adv_cf.py`` of wianluna/adversarial_purification:
    curve weights start equal (identity), Adam lr 0.1, 10 iterations, loss
    ``1 - f/range + 0.5 * sum((w/sum w - 1/P)^2)``, weights clipped at 0 before each step, the
    curve's output clipped by masked assignment, output quantised to 1/255. By default each image
    is on its own: its score term is not divided by the batch size and its best curve is kept per
    image (the reference, run on batches of one, gives the same). ``batch_mean: true`` couples a
    batch as the reference's code does for larger batches. Unbounded in pixel norms; the output is
    a non-decreasing function of the input, channel by channel.
    """

    name = "advcf"
    version = "2"  # 2: matches the reference (see docs/fidelity.md)
    norm = None
    params = (
        Param("iters", int, 10, help="number of Adam steps", low=1, presets=(1, 3, 5, 7, 9, 12, 14, 16, 18, 20)),
        Param("lr", float, 0.1, help="Adam learning rate", low=0.0),
        Param("pieces", int, 64, help="number of linear pieces of each curve", low=1),
        Param("smoothness", float, 0.5, help="weight of the regulariser pulling curves to the identity", low=0.0),
        Param(
            "batch_mean",
            bool,
            False,
            help="as the reference with batches > 1: average the score term over the batch (regulariser "
            "summed) and keep, for the whole batch, the iteration whose best image scored best",
        ),
    )
    iters: int
    lr: float
    pieces: int
    smoothness: float
    batch_mean: bool

    def objective(
        self, metric: Metric, images: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss the reference's ``step`` minimises, for curve ``weights`` ``[B, 3, P]`` (>= 0).

        Returns the scalar to differentiate, each image's ``1 - f/range`` and the clipped curve
        output. Per image by default; with ``batch_mean`` the score term is the reference's
        ``torch.mean`` over the batch while the regulariser stays summed over it, as there.
        """
        share = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        regulariser = self.smoothness * (share - 1.0 / self.pieces).pow(2).flatten(1).sum(dim=1)
        adv = clip_like_masked_assignment(apply_colour_curve(images, weights))
        per_image = attack_loss(metric, adv)
        score_term = per_image.mean() if self.batch_mean else per_image.sum()
        return score_term + regulariser.sum(), per_image, adv

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        b = images.shape[0]
        weights = torch.full((b, 3, self.pieces), 1.0 / self.pieces, device=images.device, dtype=images.dtype)
        weights.requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=self.lr, betas=(0.9, 0.999), eps=1e-8)
        best = images.clone()
        best_loss = torch.full((b,), float("inf"), device=images.device)
        for _ in range(self.iters):
            with torch.no_grad():
                weights.clamp_(min=0.0)
            with torch.enable_grad():
                total, per_image, adv = self.objective(metric, images, weights)
                (grad,) = torch.autograd.grad(total, weights)
            weights.grad = torch.nan_to_num(grad)
            optimizer.step()
            with torch.no_grad():
                loss = per_image.detach()
                if self.batch_mean:  # one decision for the batch, by its best image (the reference's score.max())
                    loss = loss.min().expand(b)
                improved = loss < best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best = torch.where(improved.view(-1, 1, 1, 1), torch.round(adv.detach() * 255) / 255, best)
        return best.clamp(0.0, 1.0)


@hookimpl
def iqadef_register_attacks(register):
    register(AdvCF)
