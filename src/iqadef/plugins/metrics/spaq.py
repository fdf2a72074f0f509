"""``spaq``: the SPAQ baseline (BL) model (Fang, Zhu, Zeng, Ma & Wang, "Perceptual Quality Assessment of
Smartphone Photography", CVPR 2020; code ``h4nwei/SPAQ``), trained on the SPAQ database (MOS 0..100).

Network: the official ``Baseline``: ``backbone`` = torchvision ResNet-50 with ``fc`` = Linear(2048, 1).
``BL_release.pt`` is ``{'state_dict': <Baseline state dict>, ...}`` (keys ``backbone.*``), saved with
PyTorch 1.1 (legacy, non-zip serialisation).

Preprocessing (``preprocess``): ``msu`` (default) keeps the image at its own size, as the study's wrapper
(adversarial-defenses-for-iqa, metrics/subjects/spaq/src/model.py, ``generate_patches_custom``);
``official`` is ``Prepare_image.Image_load(size=512, stride=224)`` of BL_demo.py: the 8-bit image, and if
both sides are at least 512 the shorter side brought to 512 by PIL BILINEAR (aspect kept), 8-bit again
(:func:`~._official.pil_bilinear_resize`, straight-through gradients). Then, in both: no normalisation
(pixels in [0, 1]); 224x224 patches every 112 pixels, plus a last row/column flush with the bottom/right
edge; the score is the mean of the patch scores. Here all patches of a batch go through the network
together (one gather, then chunks of ``patch_chunk``), so a batch scores like its images one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from iqadef import ConfigError, Metric, Param, WeightSpec, hookimpl, load_weights

from ._official import (
    build_from_state,
    extract_patches,
    pil_bilinear_resize,
    preprocess_param,
    quantize_8bit,
    ready_input,
    resize,
    shorter_side_size,
    state_from_checkpoint,
)

#: ``Image_load(size=512, ...)``: the shorter side the original brings large images to.
ORIGINAL_SHORTER_SIDE = 512

BL_RELEASE = WeightSpec(
    filename="BL_release.pt",
    urls=("https://titan.gml-team.ru:5003/fsdownload/TRm4ciD3T/BL_release.pt",),
    sha256=None,
    description=(
        "SPAQ baseline checkpoint BL_release.pt (ResNet-50, SPAQ database). URL: the copy the MSU "
        "benchmark downloads (msu-video-group/adversarial-defenses-for-iqa, metrics/subjects/spaq). "
        "The authors share it on Google Drive: "
        "https://drive.google.com/file/d/1pXjXAIItViTFs7qUBY-b11WY50mzoVM2/view"
    ),
    mirrors=("https://drive.google.com/file/d/1pXjXAIItViTFs7qUBY-b11WY50mzoVM2/view",),  # h4nwei/SPAQ README
)


class SPAQBaselineNet(nn.Module):
    """The official ``Baseline``: ResNet-50 whose fc gives one score per (patch) image, ``[N]``."""

    def __init__(self):
        import torchvision  # lazily: torchvision's import costs ~2 s at every CLI start

        super().__init__()
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Linear(self.backbone.fc.in_features, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).squeeze(1)


class SPAQ(Metric):
    """SPAQ baseline (ResNet-50 on smartphone photos): mean score of 224x224 patches, MOS-like, higher is better.

    Input: ``preprocess: msu`` (default) the image at its own size, as the study's MSU wrapper;
    ``preprocess: official`` the original loader (8-bit image; shorter side to 512 by PIL bilinear when
    both sides are >= 512; 8-bit). No normalisation; 224x224 patches with stride 112 plus edge-flush
    patches; the patch scores are averaged per image.
    """

    name = "spaq"
    higher_is_better = True
    range = (21.749107360839844, 77.75585174560547)
    input_policy = (
        "preprocess msu: the input size; official: 8-bit, shorter side to 512 (PIL bilinear) when both "
        "sides are >= 512, 8-bit; `resize` sets that side (msu: torch bilinear antialiased); then "
        "patch_size crops every `stride` pixels plus edge-flush crops, scores averaged; an image "
        "smaller than a patch is first upscaled so its shorter side equals patch_size (the original fails)"
    )
    params = (
        preprocess_param(
            "8-bit image, shorter side to 512 by PIL BILINEAR when both sides are >= 512, 8-bit, "
            "Prepare_image.Image_load"
        ),
        Param(
            "resize",
            int,
            None,
            low=32,
            nullable=True,
            help="shorter side images are brought to when both sides are at least this large; null: the "
            "pipeline's own (msu: never resize, as the MSU wrapper; official: 512). With msu the resize "
            "is torch's antialiased bilinear (iqadef's), with official PIL's",
        ),
        Param("patch_size", int, 224, low=32, help="side of the square patches (the original: 224)"),
        Param("stride", int, 112, low=1, help="distance between patches (the original: patch_size / 2 = 112)"),
        Param(
            "patch_chunk", int, 64, low=1, help="patches per forward pass (memory only; the scores do not depend on it)"
        ),
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path of BL_release.pt (else $IQADEF_WEIGHTS_DIR, the cache, then download)",
        ),
    )
    preprocess: str
    resize: int | None
    patch_size: int
    stride: int
    patch_chunk: int
    weights_path: str | None
    weights = (BL_RELEASE,)

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        if self.stride > self.patch_size:
            raise ConfigError(
                f"{where or self.name}.stride: {self.stride} is larger than patch_size "
                f"{self.patch_size}, which would skip pixels; expected <= patch_size"
            )

    def identity(self) -> dict[str, Any]:
        """As the base, minus ``patch_chunk`` (it changes memory use, not the scores)."""
        out = super().identity()
        out["params"].pop("patch_chunk", None)
        return out

    def setup(self, device: torch.device) -> None:
        label = f"spaq ({self.weights_path or BL_RELEASE.filename})"
        checkpoint = load_weights(BL_RELEASE, self.weights_path, allow_numpy=True)
        self.net = build_from_state(SPAQBaselineNet, state_from_checkpoint(checkpoint, "state_dict", label), label)

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.net]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The adaptive resize (Image_load.adaptive_resize), plus an upscale for images smaller than one patch."""
        official = self.preprocess == "official"
        side = self.resize or (ORIGINAL_SHORTER_SIDE if official else None)
        if official:
            images = quantize_8bit(images)

        def to_shorter_side(x: torch.Tensor, target: int) -> torch.Tensor:
            if official:
                return pil_bilinear_resize(x, shorter_side_size(*x.shape[-2:], target))
            return resize(x, target)

        if side is not None and min(images.shape[-2:]) >= side:
            images = to_shorter_side(images, side)
        if min(images.shape[-2:]) < self.patch_size:
            images = to_shorter_side(images, self.patch_size)
        return images

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(ready_input(self, images))
        patches, per_image = extract_patches(x, self.patch_size, self.stride)
        scores = torch.cat([self.net(chunk) for chunk in patches.split(self.patch_chunk)])
        return scores.view(images.shape[0], per_image).mean(dim=1)


@hookimpl
def iqadef_register_metrics(register):
    register(SPAQ)
