"""Square attack, L-inf (Andriushchenko et al., ECCV 2020): score-only random search with square updates.

A black-box attack: it gets a :class:`~iqadef.QueryMetric` from the runner and only ever asks for scores.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from iqadef import Attack, ConfigError, Metric, Param, hookimpl

#: The eps values the benchmark sweeps (ADI ``metrics/methods/utils/attack_presets.json``, presets 0..9).
EPS_PRESETS = (0.01, 0.01395, 0.01946, 0.02714, 0.03786, 0.05282, 0.07368, 0.10278, 0.14337, 0.2)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` of ``n_iters``: the paper's schedule,
    halving ``p_init`` at fixed points of a 10000-iteration run rescaled to ``n_iters``."""
    it = int(it / n_iters * 10000)
    for upper, divisor in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
        (10000, 512),
    ):
        if it <= upper:
            return p_init / divisor
    return p_init


def image_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of image ``index`` of a batch attacked with ``seed``: one per image, so an image's
    squares do not depend on how many draws the other images of its batch needed."""
    digest = hashlib.sha256(f"square:{int(seed)}:{int(index)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g


def random_signs(shape: tuple[int, ...], eps: float, g: torch.Generator) -> torch.Tensor:
    """``eps`` or ``-eps`` with equal chance, per element (``np.random.choice([-eps, eps])``)."""
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.float32) * eps


def square_linf(
    metric: Metric, images: torch.Tensor, *, eps: float, queries: int, p_init: float, seed: int, init: str = "clean"
) -> torch.Tensor:
    """The random search of ADI ``metrics/methods/square-attack/run.py`` for a batch, each image on its own.

    Starting from x (``init: stripes``: the paper's vertical stripes of +-eps), every iteration draws for each
    image a square of side ``round(sqrt(p * H * W))`` at a uniform position, sets its perturbation to one
    random +-eps per channel (redrawn until the square changes), scores all images in one call and keeps each
    image's candidate if it moves the score strictly further in the metric's better direction (i.e. lowers
    :func:`iqadef.attack_loss`). ``queries`` scores per image in all, the first one of the start point.
    """
    x = images.detach()
    batch, channels, height, width = x.shape
    if queries < 1 or eps <= 2e-7:  # a square of +-eps would change nothing: the search could not move
        return x.clone()
    sign = 1.0 if metric.higher_is_better else -1.0
    gens = [image_generator(seed, i) for i in range(batch)]
    with torch.no_grad():
        if init == "stripes":
            stripes = torch.stack([random_signs((channels, 1, width), eps, g) for g in gens]).to(x)
            x_best = (x + stripes).clamp(0.0, 1.0)
        else:
            x_best = x.clone()
        best = sign * metric.score(x_best).detach().float().reshape(-1)
        n_features = channels * height * width
        side_limit = min(height, width) - 1
        for it in range(queries - 1):
            p = p_selection(p_init, it, queries)
            side = min(max(int(round(math.sqrt(p * n_features / channels))), 1), side_limit)
            deltas = x_best - x
            for i, g in enumerate(gens):
                top = int(torch.randint(0, height - side, (1,), generator=g))
                left = int(torch.randint(0, width - side, (1,), generator=g))
                rows, cols = slice(top, top + side), slice(left, left + side)
                window, best_window = x[i, :, rows, cols], x_best[i, :, rows, cols]
                while bool(((window + deltas[i, :, rows, cols]).clamp(0.0, 1.0) - best_window).abs().lt(1e-7).all()):
                    deltas[i, :, rows, cols] = random_signs((channels, 1, 1), eps, g).to(x)
            candidate = (x + deltas).clamp(0.0, 1.0)
            value = sign * metric.score(candidate).detach().float().reshape(-1)
            better = value > best
            x_best = torch.where(better.view(-1, 1, 1, 1), candidate, x_best)
            best = torch.where(better, value, best)
    return x_best


class SquareAttack(Attack):
    """Square attack (L-inf, score-based black-box): ``queries`` metric queries per image within ``eps``.

    Reference: ADI ``metrics/methods/square-attack/run.py`` (eps 0.1, 10000 queries, p_init 0.05, start at x).
    """

    name = "square-attack"
    norm = "linf"
    black_box = True
    params = (
        Param("eps", float, 0.1, help="L-inf bound of the perturbation", low=0.0, high=1.0, presets=EPS_PRESETS),
        Param("queries", int, 10000, help="metric queries per image (the reference's n_iters; alias n_iters)", low=1),
        Param("p_init", float, 0.05, help="initial fraction of the image a square covers", low=0.0, high=1.0),
        Param(
            "init",
            str,
            "clean",
            choices=("clean", "stripes"),
            help="start at x (the reference) or at the paper's vertical +-eps stripes",
        ),
    )
    eps: float
    queries: int
    p_init: float
    init: str

    def __init__(self, where: str | None = None, **values: Any):
        if "n_iters" in values:  # the reference's name of the query budget
            alias = values.pop("n_iters")
            if "queries" in values and values["queries"] != alias:
                raise ConfigError(
                    f"{where or self.name}: n_iters ({alias}) and queries ({values['queries']}) "
                    f"name the same budget; give one of them"
                )
            values["queries"] = alias
        super().__init__(where, **values)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return square_linf(
            metric, images, eps=self.eps, queries=self.queries, p_init=self.p_init, seed=seed, init=self.init
        )


@hookimpl
def iqadef_register_attacks(register):
    register(SquareAttack)
