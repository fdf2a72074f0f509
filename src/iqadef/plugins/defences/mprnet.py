"""MPRNet purifier: a real-noise denoiser (official SIDD weights) used to wash out adversarial noise."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from iqadef import Defence, Param, WeightsError, WeightSpec, hookimpl, load_state_dict_strict, load_weights

from ._mprnet_arch import MULTIPLE, OFFICIAL_CONFIG, MPRNet

MPRNET_WEIGHTS = WeightSpec(
    filename="model_denoising.pth",
    urls=(
        # The copy the reference study downloads (msu-video-group/adversarial-defenses-for-iqa,
        # metrics/defences/mprnet/dfsrc/setup.sh), published there as mprnet_denoise.pth.
        "https://titan.gml-team.ru:5003/fsdownload/Qo5uhUQh4/mprnet_denoise.pth",
        # The official release (swz30/MPRNet, Denoising/pretrained_models/README.md; Google Drive may
        # answer with a confirmation page instead of the file: then download it by hand).
        "https://drive.google.com/uc?export=download&id=1LODPt9kYmxwU98g96UrRA0_Eh5HYcsRw",
    ),
    description="MPRNet denoising model trained on SIDD (swz30/MPRNet); dict with 'state_dict'",
)


def unwrap_mprnet_checkpoint(checkpoint: Any, label: str) -> dict[str, torch.Tensor]:
    """The state dict inside an MPRNet checkpoint: ``ckpt['state_dict']``, minus DataParallel's ``module.``."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(
            f"{label}: expected a dict with a 'state_dict' entry (the official MPRNet layout), "
            f"got {type(checkpoint).__name__}"
        )
    return OrderedDict((k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state.items())


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right up to a multiple of ``multiple``: reflect, as the reference does.

    Reflection needs the pad to be smaller than the side; tiny images fall back to replicate.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


class MPRNetDefence(Defence):
    """MPRNet: multi-stage denoising network (official SIDD weights); reflect-pads to a multiple of 8.

    Reference: msu-video-group/adversarial-defenses-for-iqa, metrics/defences/mprnet/run.py (the
    denoising model of swz30/MPRNet): pad bottom/right by reflection to a multiple of 8, keep the
    stage-3 output, clamp to [0, 1], crop back. Differentiable (a plain network).
    """

    name = "mprnet"
    differentiable = True
    params = (
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path to model_denoising.pth (else $IQADEF_WEIGHTS_DIR, the cache, or a download)",
        ),
    )
    weights_path: str | None
    weights = (MPRNET_WEIGHTS,)
    #: Network configuration; tests override it with a tiny one.
    arch_config: ClassVar[dict[str, Any]] = OFFICIAL_CONFIG

    def build_network(self) -> MPRNet:
        return MPRNet(**self.arch_config)

    def setup(self, device: torch.device) -> None:
        checkpoint = load_weights(MPRNET_WEIGHTS, self.weights_path)
        label = self.weights_path or MPRNET_WEIGHTS.filename
        network = self.build_network()
        load_state_dict_strict(network, unwrap_mprnet_checkpoint(checkpoint, label), label)
        self.network = network

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.network]

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        height, width = images.shape[-2:]
        restored = self.network(pad_to_multiple(images, MULTIPLE))
        return restored[..., :height, :width].clamp(0.0, 1.0)


@hookimpl
def iqadef_register_defences(register):
    register(MPRNetDefence)
