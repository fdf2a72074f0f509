"""DiffPure followed by unsharp masking: the sharpening restores some of the detail the denoiser smooths away."""

from __future__ import annotations

from typing import Any

import torch

from iqadef import ConfigError, Param, hookimpl, installed_plugins

from .diffpure import DiffPure


class DiffPureUnsharp(DiffPure):
    """DiffPure + unsharp: DiffPure (t of 1000 steps), then x + amount·(x − gaussian_blur(x)), clipped.

    The second stage is the registered ``unsharp`` defence built with ``kernel_size``, ``sigma`` and ``amount``
    (reference: k 5, sigma 1, amount 1); the first takes DiffPure's parameters.
    """

    name = "diffpure-unsharp"
    params = DiffPure.params + (
        Param("kernel_size", int, 5, low=1, high=63, help="unsharp: odd side of the Gaussian kernel"),
        Param("sigma", float, 1.0, low=1e-3, help="unsharp: standard deviation of the Gaussian in pixels"),
        Param("amount", float, 1.0, low=0.0, help="unsharp: strength of the sharpening"),
    )
    kernel_size: int
    sigma: float
    amount: float

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        # Built now (cheap) so that a bad unsharp value is reported before any model is loaded.
        self._unsharp = _unsharp_class()(
            f"{where or self.name}", kernel_size=self.kernel_size, sigma=self.sigma, amount=self.amount
        )

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self._unsharp.load(device)

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        # forward(): differentiable when unsharp is, its BPDA path otherwise; the same values as purify().
        return self._unsharp.forward(super().purify(images, seed=seed))


def _unsharp_class() -> type:
    try:
        return installed_plugins().get("defences", "unsharp")
    except ConfigError as exc:
        raise ConfigError(f"diffpure-unsharp needs the `unsharp` defence, which is not registered ({exc})") from None


@hookimpl
def iqadef_register_defences(register):
    register(DiffPureUnsharp)
