"""``densepure``: DensePure (Xiao et al., ICLR 2023, "DensePure: understanding diffusion models towards adversarial
robustness"; code ``Jayfeather1024/DensePure``), as the certified-IQA study runs it
(``katiashh/certified-iqa-defenses`` ``DensePure-master/calc_dp_*.py``): each noisy copy ``x + N(0, sigma^2 I)`` is
mapped to [-1, 1] (noise ``2 sigma``), scaled by ``1 / sqrt(1 + (2 sigma)^2)`` so that it is the diffusion's
``x_t`` at the step ``t`` whose level ``sqrt(1 / abar_t - 1)`` is nearest ``2 sigma``, and denoised by a short
reverse chain: ``steps`` ancestral DDPM steps over the respaced timesteps ``round(t - i t / steps)``
(``runners/diffpure_guided_densepure.py``, ``use_t_steps``, and the respacing inside its modified
``guided_diffusion/gaussian_diffusion.py`` ``p_sample``); the metric scores ``(x_0 + 1) / 2`` and the binned score is
certified as ``rs`` does (``Smooth.certify``: n0 100 + n 1000, Clopper-Pearson, alpha 0.001, 10 bins).

The reverse chain is random (its noise is independent of the smoothing noise), so the certified function is the
probability of each bin over both: Cohen et al.'s certificate holds unchanged. The study's scripts run one reverse
chain per noisy copy (``clustering_method='none'``, ``reverse_seed`` 0); DensePure's paper repeats the chain with
``votes`` reverse seeds and takes each copy's majority bin (``results/merge_results.py``), a named option here.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from iqadef import Metric, Param, binned_params, hookimpl, score_bins

from ._diffusion import MODEL_PARAMS, DiffusionBinnedSmoothing


def nearest_step(sigma: float, abar: torch.Tensor) -> int:
    """The reference's step (``GuidedDiffusion.__init__``): of the two consecutive steps whose levels
    ``sqrt(1 / abar_t - 1)`` bracket ``2 sigma`` (``level_t < 2 sigma <= level_(t+1)``), the nearer one (``t`` on a
    tie). The reference falls back to the last step when nothing brackets ``2 sigma``; here that is an error."""
    level = (1.0 / abar - 1.0).sqrt().tolist()
    target = 2.0 * sigma
    for t in range(len(level) - 1):
        if level[t] < target <= level[t + 1]:
            return t + 1 if target - level[t] > level[t + 1] - target else t
    side = "above the model's largest" if target > level[-1] else "below the model's smallest"
    raise ValueError(f"sigma {sigma:g} is {side} noise level ({(level[-1] if target > level[-1] else level[0]) / 2:g})")


def reverse_chain(t: int, steps: int) -> list[int]:
    """The respaced timesteps of the reverse chain, first to last: ``round(t - i t / steps)`` for ``i < steps``
    (Python's rounding, as the reference's ``indices_t_steps``)."""
    return [round(t - i * (t / steps)) for i in range(steps)]


def respaced_betas(chain: list[int], abar: torch.Tensor) -> list[float]:
    """The betas of the respaced chain (``p_sample``'s respacing): over ``[0] + chain`` reversed, ``beta_k = min(1 -
    abar[t_(k+1)] / abar[t_k], 0.999)``. Its ``abar'_k`` is then ``abar[t_(k+1)] / abar[0]``, as the reference's."""
    points = [0] + chain[::-1]
    return [min(1.0 - float(abar[b]) / float(abar[a]), 0.999) for a, b in zip(points, points[1:])]


def majority(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``[B]``: per row of ``scores`` ``[B, V]`` (V reverse runs of one noisy copy), the score of the first run whose
    bin (``classes``) is the row's most frequent one; a tie goes to the bin met first, as DensePure's
    ``max(list(p), key=list(p).count)`` in ``merge_results.py``."""
    counts = (classes[:, :, None] == classes[:, None, :]).sum(dim=2)
    first = counts.argmax(dim=1)  # the first index of the maximum
    return scores.gather(1, first[:, None])[:, 0]


class DensePure(DiffusionBinnedSmoothing):
    """rs after a short reverse diffusion (2 respaced DDPM steps from the step nearest noise 2 sigma) of each noisy
    copy; `votes` > 1: DensePure's majority bin over that many reverse runs per copy (Xiao et al. 2023).

    Certified radius and abstention as rs, with sigma (the noise added is exactly sigma)."""

    steps: int
    votes: int
    reverse_seed: int
    name = "densepure"
    version = "1"
    params = (
        binned_params()
        + MODEL_PARAMS
        + (
            Param(
                "steps",
                int,
                2,
                "reverse DDPM steps of the respaced chain (the reference's num_t_steps)",
                low=1,
                presets=(1, 2, 5, 10),
            ),
            Param(
                "votes",
                int,
                1,
                "reverse runs per noisy copy, majority bin (DensePure's majority_vote_num; 1: one run, "
                "as the certified-IQA scripts)",
                low=1,
                presets=(1, 3, 10),
            ),
            Param("reverse_seed", int, 0, "seed of the reverse chains' noise (combined with the run's seed)", low=0),
        )
    )

    def samples_per_image(self) -> int:
        return (int(self.n0) + int(self.n)) * int(self.votes)

    def chain(self) -> tuple[int, list[int], float]:
        """``(t, chain, scale)``: the starting step, the respaced timesteps and the input scale
        ``1 / sqrt(1 + (2 sigma)^2)``."""
        if not hasattr(self, "_chain_cache"):
            abar = self.schedule()
            t = nearest_step(float(self.sigma), abar)
            chain = reverse_chain(t, int(self.steps))
            if len(set(chain)) < len(chain) or chain[-1] < 1:
                raise ValueError(
                    f"{self.name}: {self.steps} reverse steps from step {t} (sigma {float(self.sigma):g}) "
                    f"repeat a timestep; use fewer steps or a larger sigma"
                )
            self._chain_cache = (t, chain, 1.0 / math.sqrt(1.0 + (2.0 * float(self.sigma)) ** 2))
        return self._chain_cache

    def setup(self, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        super().setup(device)
        _, chain, _ = self.chain()
        # the respaced chain as a DDPM of len(chain) steps: learned-range variance, x_0 clipped to [-1, 1], as the
        # reference's p_sample with its respaced betas
        self.scheduler = DDPMScheduler(
            num_train_timesteps=len(chain),
            trained_betas=respaced_betas(chain, self.schedule()),
            variance_type="learned_range",
            clip_sample=True,
            clip_sample_range=1.0,
            prediction_type="epsilon",
        )

    def reverse(self, x_t: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """``x_0`` in [-1, 1] from ``x_t`` by the respaced chain; the model sees each step's real timestep."""
        _, chain, _ = self.chain()
        x = x_t
        for k, real in enumerate(chain):
            step = len(chain) - 1 - k
            out = self.diffusion._predict(x, real)
            x = self.scheduler.step(out, step, x, generator=generators).prev_sample
        return x

    def reverse_generator(self, seed: int, reverse_seed: int, image: int, device: torch.device) -> torch.Generator:
        """The reverse chains' noise of image ``image``: its own stream, apart from the smoothing noise's. Vote
        ``v`` uses reverse seed ``reverse_seed + v``, as DensePure merges runs made with reverse seeds 0, 1, ..."""
        state = np.random.SeedSequence([int(seed), int(reverse_seed), int(image)]).generate_state(2)
        return torch.Generator(device=device).manual_seed((int(state[0]) << 31) ^ int(state[1]))

    def base_sampler(
        self, images: torch.Tensor, seed: int
    ) -> Callable[[Metric, torch.Tensor, list[int]], torch.Tensor]:
        votes = int(self.votes)
        gens = {
            (i, v): self.reverse_generator(seed, int(self.reverse_seed) + v, i, images.device)
            for i in range(images.shape[0])
            for v in range(votes)
        }

        def score(metric: Metric, noisy: torch.Tensor, owners: list[int]) -> torch.Tensor:
            _, _, scale = self.chain()
            x_t = scale * (2.0 * noisy - 1.0)
            if votes > 1:
                x_t = x_t.repeat_interleave(votes, dim=0)
            x_0 = self.reverse(x_t, [gens[i, v] for i in owners for v in range(votes)])
            scores = metric.score(((x_0 + 1.0) / 2.0).to(noisy.dtype)).reshape(-1)
            if votes == 1:
                return scores
            scores = scores.reshape(len(owners), votes)
            low, high = (float(v) for v in metric.range)
            return majority(scores, score_bins(scores, low, high, int(self.bins)))

        return score


@hookimpl
def iqadef_register_certified(register):
    register(DensePure)
