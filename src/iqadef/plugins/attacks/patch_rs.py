"""Patch-RS: random search over one square patch's colours and position (Sparse-RS, Croce et al. 2022)."""

from __future__ import annotations

import math
from typing import Any

import torch

from iqadef import Attack, Metric, Param, hookimpl

from ._blackbox import (
    image_generators,
    query_batch_param,
    query_scores,
    score_sign,
    take_aliases,
)

#: The benchmark's ``eps`` sweep, patch areas in pixels (attack_presets.json, presets 0..9).
AREA_PRESETS = (49, 64, 81, 121, 169, 225, 289, 361, 484, 625)


def random_signs(shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """``sign(2 U - 1)``: +-1 entries (the reference's ``random_choice``)."""
    return torch.sign(2 * torch.rand(shape, generator=generator) - 1)


def init_patch(channels: int, side: int, generator: torch.Generator, n_iter: int = 1000) -> torch.Tensor:
    """The ``random_squares`` start: ``n_iter`` small squares painted with random 0/1 colours."""
    patch = torch.zeros([channels, side, side])
    high = math.ceil(side**0.5)
    for _ in range(n_iter):
        size = int(torch.randint(low=1, high=high, size=[1], generator=generator).item())
        r, c = torch.randint(side - size + 1, size=[2], generator=generator).tolist()
        patch[:, r : r + size, c : c + size] = 0.0
        patch[:, r : r + size, c : c + size] += random_signs([channels, 1, 1], generator).clamp(0.0, 1.0)
    return patch.clamp(0.0, 1.0)


class _Schedule:
    """Sparse-RS's schedules for the ``patches`` threat model with ``resc_schedule`` (the reference's)."""

    def __init__(self, queries: int, p_init: float, side: int):
        self.queries, self.p_init, self.side = queries, p_init, side
        it = 0
        for it in range(queries):  # the first iteration whose square is one pixel
            if self.square_side(it) == 1:
                break
        #: From here on single channels of single pixels are flipped.
        self.single_channel_from = it + (queries - it) // 2

    def fraction(self, it: int) -> float:
        it = int(it / self.queries * 10000)
        for limit, divisor in (
            (10, 1),
            (50, 2),
            (200, 4),
            (500, 8),
            (1000, 16),
            (2000, 32),
            (4000, 64),
            (6000, 128),
            (8000, 256),
        ):
            if it <= limit:
                return self.p_init / divisor
        return self.p_init / 512

    def square_side(self, it: int) -> int:
        return int(max(self.fraction(it) ** 0.5 * self.side, 1))

    def shift(self, it: int, height: int) -> int:
        """The largest move of the patch's corner at iteration ``it``."""
        return int(max(max((float(self.queries - it) / self.queries - 0.0) ** 1.0, 0) * 0.75 * height, 0))


class _PatchSearch:
    """The state of one image's search: its patch, the patch's corner and the best score so far."""

    def __init__(self, image: torch.Tensor, side: int, generator: torch.Generator):
        self.image, self.side, self.g = image, side, generator
        c, h, w = image.shape
        if h <= side or w <= side:
            raise ValueError(
                f"patch-rs: the {side}x{side} patch does not fit inside a {h}x{w} image; use a smaller eps"
            )
        self.loc = torch.cat(
            (
                torch.randint(h - side, size=[1], generator=generator),
                torch.randint(w - side, size=[1], generator=generator),
            )
        )
        self.patch = init_patch(c, side, generator)
        self.best = None

    def render(self, patch: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        out = self.image.clone()
        r, c = loc.tolist()
        out[:, r : r + self.side, c : c + self.side] = patch.to(out)
        return out

    def propose(self, it: int, schedule: _Schedule, update_loc_period: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One candidate (patch, corner), drawn in the reference's order of random calls."""
        g, s = self.g, self.side
        c, h, w = self.image.shape
        s_it = schedule.square_side(it)
        pr, pc = torch.randint(s - s_it + 1, size=[2], generator=g).tolist()
        sh_it = schedule.shift(it, h)
        update_loc = (it % update_loc_period == 0) and sh_it > 0
        patch, loc = self.patch.clone(), self.loc.clone()
        if not update_loc:
            region = (slice(None), slice(pr, pr + s_it), slice(pc, pc + s_it))
            if it < schedule.single_channel_from:
                if s_it > 1:
                    patch[region] += random_signs([c, 1, 1], g)
                else:  # a new colour for one pixel, different from the old one
                    old = patch[region].clone()
                    new = old.clone()
                    while (new == old).all().item():
                        new = random_signs([c, 1, 1], g).clamp(0.0, 1.0)
                    patch[region] = new
            else:
                if s_it != 1:
                    raise RuntimeError("patch-rs: single-channel updates reached with a square larger than a pixel")
                channel = int((3 * torch.rand([1], generator=g)).long().item())
                patch[channel, pr, pc] = 1.0 - patch[channel, pr, pc]
            patch.clamp_(0.0, 1.0)
        else:
            loc += torch.randint(low=-sh_it, high=sh_it + 1, size=[2], generator=g)
            loc[0].clamp_(0, h - s)
            loc[1].clamp_(0, w - s)
        return patch, loc


def patch_rs(
    metric: Metric,
    images: torch.Tensor,
    generators: list[torch.Generator],
    *,
    area: int,
    queries: int,
    p_init: float,
    update_loc_period: int,
    query_batch: int,
) -> torch.Tensor:
    """``RSAttack(norm='patches').perturb`` run per image, the candidates of all images scored together.

    Each image keeps a ``ceil(sqrt(area))``-sided patch of 0/1 colours pasted on the clean image; every
    iteration proposes a change of a square of the patch (or, every ``update_loc_period``-th one, a move of
    the patch) and keeps it if the score strictly rises. ``queries`` scores per image in all.
    """
    side = math.ceil(area**0.5)
    sign = score_sign(metric)
    schedule = _Schedule(queries, p_init, side)
    searches = [_PatchSearch(img, side, g) for img, g in zip(images, generators)]
    start = torch.stack([s.render(s.patch, s.loc) for s in searches])
    best = sign * query_scores(metric, start, query_batch)
    for it in range(1, queries):
        proposals = [s.propose(it, schedule, update_loc_period) for s in searches]
        candidates = torch.stack([s.render(p, loc) for s, (p, loc) in zip(searches, proposals)])
        scores = sign * query_scores(metric, candidates, query_batch)
        for i, (search, (patch, loc)) in enumerate(zip(searches, proposals)):
            if scores[i] > best[i]:
                best[i] = scores[i]
                search.patch, search.loc = patch, loc
    return torch.stack([s.render(s.patch, s.loc) for s in searches])


class PatchRS(Attack):
    """Patch-RS (Sparse-RS patches): random search over one square patch, score queries only.

    Reference: ``metrics/methods/patch-rs/run.py`` of adversarial-defenses-for-iqa (Croce et al.,
    "Sparse-RS: a versatile framework for query-efficient sparse black-box adversarial attacks", AAAI 2022).
    """

    name = "patch-rs"
    norm = "l0"
    black_box = True
    params = (
        Param(
            "eps",
            int,
            169,
            help="patch area in pixels; the patch is ceil(sqrt(eps)) pixels square",
            low=1,
            presets=AREA_PRESETS,
        ),
        Param("queries", int, 10000, help="query budget per image (the reference's n_queries)", low=1),
        Param("p_init", float, 0.8, help="initial fraction of the patch changed per step", low=0.0, high=1.0),
        Param("update_loc_period", int, 4, help="every this many iterations the patch moves instead", low=2),
        query_batch_param(),
    )
    eps: int
    queries: int
    p_init: float
    update_loc_period: int
    query_batch: int

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **take_aliases(values, {"n_queries": "queries"}, where or self.name))

    def bound(self) -> float:
        """The L0 size: pixels the patch covers (all channels)."""
        return float(math.ceil(self.eps**0.5) ** 2)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        return patch_rs(
            metric,
            images,
            image_generators(seed, images.shape[0]),
            area=self.eps,
            queries=self.queries,
            p_init=self.p_init,
            update_loc_period=self.update_loc_period,
            query_batch=self.query_batch,
        )


@hookimpl
def iqadef_register_attacks(register):
    register(PatchRS)
