"""``ddrs``: diffusion-denoised randomized smoothing (Carlini et al., ICLR 2023, "(Certified!!) adversarial
robustness for free"), as the certified-IQA study runs it (``katiashh/certified-iqa-defenses``
``ccrf/calc_ddrs_*.py``): the noisy image is the diffusion model's forward process at the first step ``t``
whose noise level ``sqrt(1 - abar_t) / sqrt(abar_t)`` reaches ``2 sigma`` (the model works on [-1, 1]); one
denoising call predicts ``x_0`` (clipped to [-1, 1]); the metric scores ``(x_0 + 1) / 2``; the binned score
is certified as ``rs`` does.

The noise the reference adds is the diffusion's own (``q_sample``), a little above sigma where no step matches
exactly; iqadef adds exactly that noise (:meth:`noise_sigma`) and, like the reference, computes the radius
with ``sigma`` (conservative). The model is DiffPure's (``model``/``weights_path``: the ImageNet 256x256
unconditional guided-diffusion checkpoint by default); the image is not resized (the reference's resize is
commented out).
"""

from __future__ import annotations

import torch

from iqadef import binned_params, hookimpl

from ._diffusion import MODEL_PARAMS, DiffusionBinnedSmoothing


def diffusion_step_for(sigma: float, abar: torch.Tensor) -> int:
    """The reference's step: the first ``t >= 1`` with ``sqrt(1 - abar_t) / sqrt(abar_t) >= 2 sigma``."""
    level = ((1.0 - abar) / abar).sqrt()
    for t in range(1, abar.shape[0]):
        if float(level[t]) >= 2.0 * sigma:
            return t
    raise ValueError(f"sigma {sigma:g} is above the model's largest noise level ({float(level[-1]) / 2:g})")


class DiffusionDenoisedSmoothing(DiffusionBinnedSmoothing):
    """rs after one diffusion denoising step at the noise level of sigma (Carlini et al. 2023; DiffPure's model).

    x_t = sqrt(abar_t)(2(x + noise) - 1), x_0 = clip((x_t - sqrt(1 - abar_t) eps(x_t, t)) / sqrt(abar_t)),
    score f((x_0 + 1) / 2); certified radius and abstention as rs."""

    name = "ddrs"
    version = "1"
    params = binned_params() + MODEL_PARAMS

    def _step(self) -> tuple[int, float, float]:
        if not hasattr(self, "_step_cache"):
            abar = self.schedule()
            t = diffusion_step_for(float(self.sigma), abar)
            self._step_cache = (t, float(abar[t].sqrt()), float((1.0 - abar[t]).sqrt()))
        return self._step_cache

    def noise_sigma(self) -> float:
        _, a, b = self._step()
        return b / (2.0 * a)

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self._step()

    def base(self, metric, noisy: torch.Tensor) -> torch.Tensor:
        t, a, b = self._step()
        x_t = a * (2.0 * noisy - 1.0)
        eps = self.diffusion._predict(x_t, t)[:, : noisy.shape[1]]
        x_0 = ((x_t - b * eps) / a).clamp(-1.0, 1.0)
        return metric.score(((x_0 + 1.0) / 2.0).to(noisy.dtype))


@hookimpl
def iqadef_register_certified(register):
    register(DiffusionDenoisedSmoothing)
