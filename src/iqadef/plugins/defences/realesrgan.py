"""Real-ESRGAN purifier: a blind super-resolution net (x4, with learned denoising) run at output scale 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from iqadef import Defence, Param, WeightsError, WeightSpec, hookimpl, load_state_dict_strict, load_weights

from ._realesrgan_arch import OFFICIAL_CONFIG, SRVGGNetCompact, interpolate_weights

_RELEASE = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/"

GENERAL_WEIGHTS = WeightSpec(
    filename="realesr-general-x4v3.pth",
    urls=(_RELEASE + "realesr-general-x4v3.pth",),
    description="Real-ESRGAN realesr-general-x4v3 (strong denoising); dict with 'params'",
)
WDN_WEIGHTS = WeightSpec(
    filename="realesr-general-wdn-x4v3.pth",
    urls=(_RELEASE + "realesr-general-wdn-x4v3.pth",),
    description="Real-ESRGAN realesr-general-wdn-x4v3 (weak denoising), blended in by denoise_strength < 1",
)

#: How the x4 output is brought back to the input size (outscale 1).
_DOWNSCALE = ("bicubic", "bilinear", "area")


def unwrap_realesrgan_checkpoint(checkpoint: Any, label: str) -> dict[str, torch.Tensor]:
    """BasicSR layout: the weights under ``params_ema`` (preferred, as the reference's loader does) or ``params``."""
    if isinstance(checkpoint, dict):
        for key in ("params_ema", "params"):
            if isinstance(checkpoint.get(key), dict):
                return dict(checkpoint[key])
    found = f"keys {sorted(map(str, checkpoint))[:5]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise WeightsError(
        f"{label}: expected a dict with 'params' or 'params_ema' (the Real-ESRGAN release layout); found {found}"
    )


class RealESRGANDefence(Defence):
    """Real-ESRGAN: realesr-general-x4v3 super-resolution (denoise strength 0.2), resized back to the input size.

    Reference: msu-video-group/adversarial-defenses-for-iqa, metrics/defences/realesrgan/run.py with
    xinntao/Real-ESRGAN's inference_realesrgan.py: the x4 SRVGGNetCompact (32 convs, PReLU), weights
    ``s * general + (1 - s) * wdn`` for denoise strength ``s`` (deep network interpolation), fp32, no
    tiling, no pre-padding (a x4 net needs none).

    Two deliberate differences. (1) The reference's ``RealESRGANer.enhance`` (metrics/defences/realesrgan/
    dfsrc/utils.py) ignores ``outscale`` and returns the x4 image: its metric scores a 16x larger image, and
    its full-reference measures resize it back with torchvision's ``Resize``. iqadef's defences keep the
    input size (every pair of images is measured at x's size and the metric sees the size it was attacked
    at), so the x4 output is resized back here: antialiased bicubic (default, the closest to the official
    script's Lanczos for ``outscale``), bilinear or area. (2) The reference leaves the network's output
    unclamped (a super-resolution net can overshoot [0, 1] at sharp edges); iqadef's images are in [0, 1] by contract
    (metrics, measures and stored 8-bit images assume it), so the output is clamped before and after the
    resize.
    """

    name = "realesrgan"
    differentiable = True
    params = (
        Param(
            "denoise_strength",
            float,
            0.2,
            low=0.0,
            high=1.0,
            help="weight of realesr-general-x4v3 against realesr-general-wdn-x4v3 (1: strong denoising only)",
        ),
        Param(
            "downscale",
            str,
            "bicubic",
            choices=_DOWNSCALE,
            help="resampling that brings the x4 output back to the input size (antialiased)",
        ),
        Param("weights_path", Path, None, help="explicit path to realesr-general-x4v3.pth"),
        Param("wdn_weights_path", Path, None, help="explicit path to realesr-general-wdn-x4v3.pth"),
    )
    denoise_strength: float
    downscale: str
    weights_path: str | None
    wdn_weights_path: str | None
    weights = (GENERAL_WEIGHTS, WDN_WEIGHTS)
    #: Network configuration; tests override it with a tiny one.
    arch_config: ClassVar[dict[str, Any]] = OFFICIAL_CONFIG

    def weights_in_use(self) -> tuple[WeightSpec, ...]:
        """Only the files whose blending weight is not 0 (see :meth:`blended_state`)."""
        return ((GENERAL_WEIGHTS,) if self.denoise_strength > 0 else ()) + (
            (WDN_WEIGHTS,) if self.denoise_strength < 1 else ()
        )

    def build_network(self) -> SRVGGNetCompact:
        return SRVGGNetCompact(**self.arch_config)

    def blended_state(self) -> dict[str, torch.Tensor]:
        """The weights for this denoise strength (a file whose weight is 0 is not needed)."""
        strength = self.denoise_strength
        general = wdn = None
        if strength > 0:
            general = unwrap_realesrgan_checkpoint(
                load_weights(GENERAL_WEIGHTS, self.weights_path), self.weights_path or GENERAL_WEIGHTS.filename
            )
        if strength < 1:
            wdn = unwrap_realesrgan_checkpoint(
                load_weights(WDN_WEIGHTS, self.wdn_weights_path), self.wdn_weights_path or WDN_WEIGHTS.filename
            )
        if general is None:
            return wdn
        if wdn is None:
            return general
        try:
            return interpolate_weights(general, wdn, strength)
        except KeyError as exc:
            raise WeightsError(f"{GENERAL_WEIGHTS.filename} and {WDN_WEIGHTS.filename}: {exc.args[0]}") from None

    def setup(self, device: torch.device) -> None:
        network = self.build_network()
        load_state_dict_strict(network, self.blended_state(), f"realesrgan (denoise_strength={self.denoise_strength})")
        self.network = network

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.network]

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        size = images.shape[-2:]
        upscaled = self.network(images).clamp(0.0, 1.0)
        if self.downscale == "area":
            restored = F.interpolate(upscaled, size=size, mode="area")
        else:
            restored = F.interpolate(upscaled, size=size, mode=self.downscale, align_corners=False, antialias=True)
        return restored.clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(RealESRGANDefence)
