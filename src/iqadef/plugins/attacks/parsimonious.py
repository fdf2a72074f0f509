"""Parsimonious black-box attack: lazy-greedy local search over +-eps blocks (Moon et al., ICML 2019)."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from iqadef import Attack, Metric, Param, hookimpl

from ._blackbox import (
    image_generators,
    query_batch_param,
    query_scores,
    score_sign,
    take_aliases,
)

#: The benchmark's ``epsilon`` sweep (attack_presets.json, presets 0..9).
EPS_PRESETS = (0.01, 0.01395, 0.01946, 0.02714, 0.03786, 0.05282, 0.07368, 0.10278, 0.14337, 0.2)
#: The noise lives on a fixed 256x256 grid, resized (nearest) to the image (the reference's layout).
GRID = 256

Block = tuple[int, int, int, int]  # row, column, size, channel


def split_blocks(block_size: int) -> list[Block]:
    """The grid's blocks, row-major over positions, three channels per position (``split_block``)."""
    starts = range(0, GRID, block_size)
    return [(r, c, block_size, ch) for r, c in itertools.product(starts, starts) for ch in range(3)]


def flipped(noise: torch.Tensor, block: Block) -> torch.Tensor:
    """A copy of ``noise`` (``[3, 256, 256]``) with the sign of ``block`` flipped."""
    r, c, size, ch = block
    out = noise.clone()
    out[ch, r : r + size, c : c + size] *= -1
    return out


def apply_noise(image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``clip(image + nearest-resize(noise), 0, 1)`` for a ``[K, 3, 256, 256]`` stack of noises."""
    resized = F.interpolate(noise, size=tuple(image.shape[-2:]), mode="nearest")
    return (image + resized).clamp(0.0, 1.0)


class _BudgetSpent(Exception):
    """The next score call would pass the query budget."""


class _LocalSearch:
    """One call of the reference's ``LocalSearchHelper.perturb`` (with ``max_iters`` = 1 round).

    Scores are ``sign * f`` (to be raised). ``exact_loss`` picks how the current loss follows the
    first block taken from the priority queue: False adds the popped margin, as the benchmark's runner
    does (its margins are negated, so this lowers the current loss by the gain instead of raising
    it); True sets it to that block's score, as Moon et al.'s code does.
    """

    def __init__(
        self, metric: Metric, image: torch.Tensor, index: int, *, budget: int, query_batch: int, exact_loss: bool
    ):
        self.metric, self.image, self.index, self.budget = metric, image, index, budget
        self.sign = score_sign(metric)
        self.query_batch, self.exact_loss = query_batch, exact_loss
        self.queries = 0

    def scores(self, noises: list[torch.Tensor]) -> np.ndarray:
        if self.queries + len(noises) > self.budget:
            raise _BudgetSpent
        self.queries += len(noises)
        stacked = apply_noise(self.image, torch.stack(noises))
        scores = query_scores(self.metric, stacked, self.query_batch, [self.index] * len(noises))
        return (self.sign * scores).cpu().numpy()

    def phase(
        self,
        noise: torch.Tensor,
        blocks: list[Block],
        active: np.ndarray,
        insert: bool,
        curr: np.float32,
        first: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, np.float32]:
        """Lazy-greedy insertion (flip blocks at -eps to +eps) or deletion (the reverse)."""
        (indices,) = np.where(active == (0 if insert else 1))
        candidates = [flipped(noise, blocks[i]) for i in indices]
        losses = first if first is not None else (self.scores(candidates) if candidates else np.zeros(0))
        scored = {int(i): np.float32(loss) for loss, i in zip(losses, indices)}
        queue = [(np.float32(-(loss - curr)), i) for i, loss in scored.items()]
        heapq.heapify(queue)  # (margin, index) pairs are distinct: the pops follow the reference's order
        if queue:
            margin, best = heapq.heappop(queue)
            curr = scored[best] if self.exact_loss else np.float32(curr + margin)
            noise = flipped(noise, blocks[best])
            active[best] = 1 if insert else 0
        while queue:
            _, cand = heapq.heappop(queue)
            loss = np.float32(self.scores([flipped(noise, blocks[cand])])[0])
            margin = np.float32(-(loss - curr))
            if not queue or margin <= queue[0][0]:
                if margin > 0 or (not insert and margin == 0):
                    break
                curr = loss
                noise = flipped(noise, blocks[cand])
                active[cand] = 1 if insert else 0
            else:
                heapq.heappush(queue, (margin, cand))
        return noise, curr

    def perturb(self, noise: torch.Tensor, blocks: list[Block]) -> torch.Tensor:
        active = np.array([1 if noise[ch, r, c] > 0 else 0 for r, c, _, ch in blocks], dtype=np.int32)
        (absent,) = np.where(active == 0)
        # The current noise and every insertion candidate in one call (the reference scores them one by one).
        batch = [noise] + [flipped(noise, blocks[i]) for i in absent]
        losses = self.scores(batch)
        curr = np.float32(losses[0])
        noise, curr = self.phase(noise, blocks, active, True, curr, first=losses[1:])
        noise, _ = self.phase(noise, blocks, active, False, curr)
        return noise


def parsimonious_one(
    metric: Metric,
    image: torch.Tensor,
    index: int,
    generator: torch.Generator,
    *,
    eps: float,
    queries: int,
    block_size: int,
    blocks_per_search: int,
    query_batch: int,
    exact_loss: bool,
) -> tuple[torch.Tensor, int]:
    """The reference's ``attack`` for image ``index`` of the batch (``[1, 3, H, W]``): x_a and the queries spent.

    The noise starts at -eps everywhere; blocks are visited in a random order, ``blocks_per_search`` at a
    time, each group improved by one local search; after a pass the blocks are halved (down to 1 pixel
    of the grid). A search that would pass the budget of ``queries`` is abandoned and the image of the
    previous one returned: the reference's x_a (it finishes that search, then discards it) without the
    queries it throws away.
    """
    noise = torch.full((3, GRID, GRID), -eps, dtype=image.dtype, device=image.device)
    search = _LocalSearch(metric, image, index, budget=queries, query_batch=query_batch, exact_loss=exact_loss)
    adv = image.clone()
    blocks = split_blocks(block_size)
    order = torch.randperm(len(blocks), generator=generator).tolist()
    while True:
        for start in range(0, len(blocks), blocks_per_search):
            try:
                noise = search.perturb(noise, [blocks[k] for k in order[start : start + blocks_per_search]])
            except _BudgetSpent:
                return adv, search.queries
            adv = apply_noise(image, noise[None])
        if block_size >= 2:
            block_size //= 2
            blocks = split_blocks(block_size)
        order = torch.randperm(len(blocks), generator=generator).tolist()


class Parsimonious(Attack):
    """Parsimonious black-box attack: greedy sign flips of +-eps blocks, score queries only.

    Reference: ``metrics/methods/parsimonious/run.py`` of adversarial-defenses-for-iqa (Moon et al.,
    "Parsimonious black-box adversarial attacks via efficient combinatorial optimization", ICML 2019).
    """

    name = "parsimonious"
    norm = "linf"
    black_box = True
    params = (
        Param(
            "eps",
            float,
            0.05,
            help="L-inf size of the +-eps block noise (the reference's epsilon)",
            low=0.0,
            high=1.0,
            presets=EPS_PRESETS,
        ),
        Param("queries", int, 10000, help="query budget per image (the reference's max_queries)", low=1),
        Param(
            "block_size",
            int,
            32,
            help="first block side on the 256x256 noise grid; halved after each pass",
            low=1,
            high=GRID,
        ),
        Param("blocks_per_search", int, 64, help="blocks per local search (the reference's batch_size)", low=1),
        Param(
            "exact_loss",
            bool,
            False,
            help="track the current score as Moon et al. do (the reference "
            "lowers it by the gain of the first block taken; docs/fidelity.md)",
        ),
        query_batch_param(),
    )
    eps: float
    queries: int
    block_size: int
    blocks_per_search: int
    exact_loss: bool
    query_batch: int

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(
            where, **take_aliases(values, {"epsilon": "eps", "max_queries": "queries"}, where or self.name)
        )

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        images = images.detach()
        out = []
        for index, (image, generator) in enumerate(zip(images, image_generators(seed, images.shape[0]))):
            adv, _ = parsimonious_one(
                metric,
                image[None],
                index,
                generator,
                eps=self.eps,
                queries=self.queries,
                block_size=self.block_size,
                blocks_per_search=self.blocks_per_search,
                query_batch=self.query_batch,
                exact_loss=self.exact_loss,
            )
            out.append(adv)
        return torch.cat(out)


@hookimpl
def iqadef_register_attacks(register):
    register(Parsimonious)
