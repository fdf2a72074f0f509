"""Random-noise purifier: additive Gaussian noise drowns a small, carefully placed perturbation."""

from __future__ import annotations

import torch

from iqadef import Defence, Param, hookimpl


class RandomNoise(Defence):
    """Random noise: add Gaussian noise of a given sigma to every pixel, then clip to [0, 1].

    Reference: msu-video-group/adversarial-defenses-for-iqa (metrics/defences/random-noise/run.py). The noise is
    drawn from the seed and depends only on it and the batch shape, so the clean and the attacked image of a pair
    get the same noise (different images of a batch get different noise).
    """

    name = "random-noise"
    randomized = True
    differentiable = True
    params = (
        Param(
            "sigma",
            float,
            0.01,
            low=0.0,
            high=1.0,
            presets=(0.01, 0.025, 0.05, 0.075, 0.1),
            help="standard deviation of the noise (image range 1)",
        ),
    )
    sigma: float

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        generator = self.generator(seed, images.device)
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return (images + self.sigma * noise).clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(RandomNoise)
