"""Gradient estimation by score queries: antithetic Gaussian finite differences (NES), normalised steps."""

from __future__ import annotations

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._blackbox import image_generators, query_batch_param, query_scores, score_sign

#: The benchmark's ``eps`` sweep (attack_presets.json, presets 0..9).
EPS_PRESETS = (0.01, 0.01395, 0.01946, 0.02714, 0.03786, 0.05282, 0.07368, 0.10278, 0.14337, 0.2)


def add_tiled(images: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
    """``clamp(x + tile repeated over the image, 0, 1)`` (the reference's ``get_adv``); ``tile`` is
    ``[B, 3, N, N]``, one per image."""
    h, w = images.shape[-2:]
    n = tile.shape[-1]
    tiled = torch.tile(tile, (1, 1, h // n + 1, w // n + 1))[..., :h, :w]
    return torch.clamp(images + tiled, 0, 1)


def estimate_gradients(
    metric: Metric,
    images: torch.Tensor,
    generators: list[torch.Generator],
    *,
    samples: int,
    sigma: float,
    tile: int,
    query_batch: int,
) -> torch.Tensor:
    """``1/(2 n sigma) sum_i (f(x + sigma u_i) - f(x - sigma u_i)) u_i`` per image, ``u_i`` a Gaussian
    ``[3, N, N]`` tile (the reference's ``grad_est``); the 2n candidates of every image in one go.

    The sum is accumulated in the reference's order (+ then - for each i), so the float result is
    the reference's."""
    b = images.shape[0]
    u = torch.stack(
        [
            torch.stack([torch.empty((3, tile, tile)).normal_(mean=0, std=1, generator=g) for _ in range(samples)])
            for g in generators
        ]
    ).to(images.device)
    plus = add_tiled(images.repeat_interleave(samples, 0), sigma * u.flatten(0, 1))
    minus = add_tiled(images.repeat_interleave(samples, 0), -sigma * u.flatten(0, 1))
    owners = torch.arange(b).repeat_interleave(2 * samples)
    scores = query_scores(metric, torch.stack((plus, minus), 1).flatten(0, 1), query_batch, owners)
    scores = scores.view(b, samples, 2)
    g = torch.zeros((b, 3, tile, tile), device=images.device)
    for i in range(samples):
        g += scores[:, i, 0].view(b, 1, 1, 1) * u[:, i]
        g -= scores[:, i, 1].view(b, 1, 1, 1) * u[:, i]
    return 1 / (2 * samples * sigma) * g


def unit_step(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||`` for one image's ``[1, 3, N, N]`` estimate (the reference's shape, so the same float
    reduction); zero where the estimate is zero (a flat score: the reference divides 0 by 0 and returns NaN)."""
    norm = torch.linalg.norm(g)
    return g / norm if norm > 0 else torch.zeros_like(g)


def grad_est(
    metric: Metric,
    images: torch.Tensor,
    generators: list[torch.Generator],
    *,
    eps: float,
    iters: int,
    samples: int,
    sigma: float,
    eta: float,
    tile: int,
    query_batch: int,
) -> torch.Tensor:
    """``iters`` steps of ``eta`` times the unit-L2 gradient estimate (tiled over the image), each followed by
    clamping to [0, 1] and to the L-inf ball of ``eps`` around x (``metrics/methods/grad-est/run.py``)."""
    sign = score_sign(metric)
    lower = torch.clip(images - eps, 0, 1)
    upper = torch.clip(images + eps, 0, 1)
    x = images
    for _ in range(iters):
        g = estimate_gradients(metric, x, generators, samples=samples, sigma=sigma, tile=tile, query_batch=query_batch)
        g = torch.cat([unit_step(g[i : i + 1]) for i in range(g.shape[0])])
        x = add_tiled(x, eta * g * sign)
        x = torch.clip(x, lower, upper)
    return x


class GradEst(Attack):
    """Gradient estimation by queries: antithetic Gaussian differences of a tiled perturbation.

    Reference: ``metrics/methods/grad-est/run.py`` of adversarial-defenses-for-iqa (the NES estimator of
    Ilyas et al., "Black-box adversarial attacks with limited queries and information", ICML 2018).
    """

    name = "grad-est"
    norm = "linf"
    black_box = True
    params = (
        Param("eps", float, 0.1, help="L-inf bound of the perturbation", low=0.0, high=1.0, presets=EPS_PRESETS),
        Param(
            "queries",
            int,
            10000,
            help="query budget per image: queries // (2 * samples) steps (the reference: 250 steps, max_iters)",
            low=1,
        ),
        Param("samples", int, 20, help="random directions per step, each scored at +-sigma (the reference's n)", low=1),
        Param("sigma", float, 0.001, help="finite-difference radius", low=0.0),
        Param("eta", float, 0.1, help="step length (L2 norm of the step tile)", low=0.0),
        Param("tile", int, 32, help="side of the perturbation tile repeated over the image (the reference's N)", low=1),
        query_batch_param(),
    )
    eps: float
    queries: int
    samples: int
    sigma: float
    eta: float
    tile: int
    query_batch: int

    @property
    def iters(self) -> int:
        """Steps that fit the query budget."""
        return self.queries // (2 * self.samples)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        return grad_est(
            metric,
            images,
            image_generators(seed, images.shape[0]),
            eps=self.eps,
            iters=self.iters,
            samples=self.samples,
            sigma=self.sigma,
            eta=self.eta,
            tile=self.tile,
            query_batch=self.query_batch,
        )


@hookimpl
def iqadef_register_attacks(register):
    register(GradEst)
