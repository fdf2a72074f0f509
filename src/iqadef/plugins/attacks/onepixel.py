"""One-pixel attack: a few pixels set to any colour, found by differential evolution (Su et al., 2019)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import differential_evolution

from iqadef import Attack, Metric, Param, hookimpl

from ._blackbox import (
    image_seeds,
    query_batch_param,
    query_scores,
    score_sign,
    take_aliases,
)

#: The benchmark's ``PIXEL_COUNT`` sweep (attack_presets.json, presets 0..9).
PIXEL_PRESETS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] to ``H x W x 3`` uint8 by truncation, as the reference converts (exact for an
    image read from an 8-bit file)."""
    return torch.clamp(image * 255, 0, 255.0).permute(1, 2, 0).cpu().numpy().astype("uint8")


def paint_pixels(candidates: np.ndarray, base: np.ndarray) -> np.ndarray:
    """One uint8 image per candidate row ``[x, y, r, g, b] * k`` (floats, truncated to ints): each pixel
    ``(x, y)`` (row, column) of ``base`` set to its colour, later pixels of a row over earlier ones."""
    xs = candidates.astype(int)
    images = np.repeat(base[None], len(xs), axis=0)
    rows = np.arange(len(xs))
    h, w = base.shape[:2]
    for k in range(xs.shape[1] // 5):
        px = xs[:, 5 * k : 5 * k + 5]
        # A coordinate equals the image size only if scipy draws its upper bound exactly (the reference
        # then fails with an IndexError): keep it on the last row/column.
        images[rows, np.minimum(px[:, 0], h - 1), np.minimum(px[:, 1], w - 1)] = np.minimum(px[:, 2:5], 255)
    return images


def population_size(pixels: int, popsize: int) -> int:
    """scipy's population: ``popmul * len(bounds)`` with the reference's ``popmul = max(1, popsize // len(bounds))``."""
    dims = 5 * pixels
    return max(1, popsize // dims) * dims


def onepixel_one(
    metric: Metric,
    image: torch.Tensor,
    index: int,
    rng: np.random.Generator,
    *,
    pixels: int,
    iters: int,
    popsize: int,
    query_batch: int,
) -> torch.Tensor:
    """``attack_main`` of ``metrics/methods/onepixel/run.py`` for image ``index`` (``[3, H, W]``) of the batch.

    scipy's ``differential_evolution`` (best1bin, recombination 1, ``atol`` -1, no polishing) maximises
    ``sign * f`` over ``pixels`` (row, column, r, g, b) quintuples; the whole population of a generation
    is scored together (``vectorized``), ``query_batch`` images per metric call.
    """
    base = to_uint8(image)
    sign = score_sign(metric)
    h, w = base.shape[:2]
    bounds = [(0, h), (0, w), (0, 256), (0, 256), (0, 256)] * pixels

    def objective(xs: np.ndarray) -> np.ndarray:  # xs: [dims, S]; scipy minimises
        batch = torch.from_numpy(paint_pixels(xs.T, base)).permute(0, 3, 1, 2).type(torch.FloatTensor).div_(255)
        scores = query_scores(metric, batch.to(image.device), query_batch, [index] * len(batch))
        return -sign * scores.cpu().numpy().astype(np.float64)

    result = differential_evolution(
        objective,
        bounds,
        maxiter=iters,
        popsize=max(1, popsize // len(bounds)),
        recombination=1,
        atol=-1,
        polish=False,
        vectorized=True,
        updating="deferred",
        rng=rng,
    )
    best = paint_pixels(np.asarray(result.x)[None], base)[0]
    return torch.from_numpy(best).permute(2, 0, 1).float().div(255).clamp_(0, 1).to(image)


class OnePixel(Attack):
    """One-pixel attack: differential evolution over a few pixels' positions and colours.

    Reference: ``metrics/methods/onepixel/run.py`` of adversarial-defenses-for-iqa (Su et al., "One pixel
    attack for fooling deep neural networks", IEEE TEVC 2019), which calls scipy's differential_evolution.
    """

    name = "onepixel"
    norm = "l0"
    black_box = True
    params = (
        Param("pixels", int, 3, help="pixels changed (the reference's PIXEL_COUNT)", low=1, presets=PIXEL_PRESETS),
        Param(
            "iters",
            int,
            10,
            help="generations of differential evolution (scipy's maxiter); queries = (iters + 1) * population",
            low=0,
        ),
        Param("popsize", int, 300, help="target population; scipy's popsize = max(1, popsize // (5 * pixels))", low=1),
        Param(
            "queries",
            int,
            None,
            help="query budget per image instead of iters: iters = queries // population - 1",
            low=1,
        ),
        query_batch_param(32),
    )
    pixels: int
    iters: int
    popsize: int
    queries: int | None
    query_batch: int

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(
            where,
            **take_aliases(
                values, {"PIXEL_COUNT": "pixels", "POPSIZE": "popsize", "batch_size": "query_batch"}, where or self.name
            ),
        )

    def bound(self) -> float:
        """The L0 size: pixels changed."""
        return float(self.pixels)

    @property
    def generations(self) -> int:
        """``iters``, or what ``queries`` pays for: the first generation costs one population too."""
        if self.queries is None:
            return self.iters
        return max(0, self.queries // population_size(self.pixels, self.popsize) - 1)

    def queries_per_image(self) -> int:
        """What a run costs in scores per image (``iqadef plan``): a population per generation and the first."""
        return (self.generations + 1) * population_size(self.pixels, self.popsize)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        out = [
            onepixel_one(
                metric,
                image,
                i,
                np.random.default_rng(s),
                pixels=self.pixels,
                iters=self.generations,
                popsize=self.popsize,
                query_batch=self.query_batch,
            )
            for i, (image, s) in enumerate(zip(images, image_seeds(seed, images.shape[0])))
        ]
        return torch.stack(out)


@hookimpl
def iqadef_register_attacks(register):
    register(OnePixel)
