"""What the diffusion-denoised certified plugins (``ddrs``, ``densepure``) share: DiffPure's diffusion model
(``model``/``weights_path``, loaded by :class:`~iqadef.plugins.defences.diffpure.DiffPure`), its noise schedule,
and rs's binned certificate on top (Cohen et al. 2019, as ``katiashh/certified-iqa-defenses`` applies it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from iqadef import BinnedSmoothing, Param
from iqadef.plugins.defences.diffpure import DiffPure, alphas_cumprod

#: ``model`` and ``weights_path``, as diffpure's.
MODEL_PARAMS = (
    Param(
        "model",
        str,
        "guided-256",
        help="the diffusion model, as diffpure's `model`: 'guided-256' or a local diffusers DDPM folder",
    ),
    Param("weights_path", Path, None, help="explicit path of the guided-diffusion checkpoint", nullable=True),
)


class DiffusionBinnedSmoothing(BinnedSmoothing):
    """rs of the metric after a denoiser built from DiffPure's diffusion model (``self.diffusion`` once loaded).

    Subclasses implement :meth:`base` with :meth:`schedule` (the model's ``alpha_bar_t``) and
    ``self.diffusion._predict(x_t, t)`` (the model's output: epsilon, then the learned variance values)."""

    weights = DiffPure.weights
    model: str
    weights_path: str | None

    def _diffpure(self) -> DiffPure:
        return DiffPure(model=self.model, weights_path=self.weights_path, t=0)

    def weights_in_use(self) -> tuple[Any, ...]:
        return self._diffpure().weights_in_use()

    def schedule(self) -> torch.Tensor:
        """The model's ``alpha_bar_t`` (float64, one per training step), read without loading the network."""
        if not hasattr(self, "_schedule_cache"):
            self._schedule_cache = alphas_cumprod(self.model)
        return self._schedule_cache

    def setup(self, device: torch.device) -> None:
        self.diffusion = self._diffpure().load(device)

    def precision_modules(self) -> list[torch.nn.Module]:
        return self.diffusion.precision_modules() if hasattr(self, "diffusion") else []
