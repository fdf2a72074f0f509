"""``linearity``: LinearityIQA (Li, Jiang & Jiang, "Norm-in-Norm Loss with Faster Convergence and Better
Performance for Image Quality Assessment", ACM MM 2020; code ``lidq92/LinearityIQA``), trained on KonIQ-10k.

The network is rebuilt module for module from the official ``IQAModel`` (arch ``resnext101_32x8d``,
pool ``avg``, ``use_bn_end=False``, ``P6 = P7 = 1``) so that ``p1q2.pth`` loads with no key mapping:

* ``features``: ResNeXt-101 32x8d without avgpool/fc (``features.0`` .. ``features.7``);
* after ``features.6`` (layer3, 1024 ch) and ``features.7`` (layer4, 2048 ch): global average pooling,
  then ``dr6`` / ``dr7`` = Linear->1024, BN, Linear->256, BN, Linear->64, BN, ReLU;
* ``regr6`` / ``regr7`` (Linear 64->1, side outputs, loaded but unused) and ``regression``
  (Linear 128->1 on the concatenated 64+64 features): the score before calibration.

``p1q2.pth`` is ``{'model': state_dict, 'optimizer': ..., 'amp': ..., 'k': [k0, k1, k2], 'b': [b0, b1, b2]}``
where ``k``/``b`` are lists of Python floats (``IQAperformance.linear_mapping`` stores ``h[i].item()``);
index 0 maps the final ``regression`` output (the official ``test_demo.py`` and the benchmark wrappers use
``k[0]``, ``b[0]``). The score is ``regression(...) * k[0] + b[0]``, on KonIQ-10k's MOS scale.

Input (``preprocess``): ``msu`` (default) feeds the image at its own size, ImageNet-normalised, as the
study's wrapper (adversarial-defenses-for-iqa, metrics/subjects/linearity/src/model.py); ``official`` is
test_demo.py with ``--resize``: the 8-bit image, PIL BILINEAR to 498x664, 8-bit again, ``to_tensor``,
ImageNet normalisation (:func:`~._official.pil_bilinear_resize`, straight-through gradients).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iqadef import ConfigError, Metric, Param, WeightsError, WeightSpec, hookimpl, load_weights

from ._official import (
    build_from_state,
    imagenet_normalize,
    pil_bilinear_resize,
    preprocess_param,
    quantize_8bit,
    ready_input,
    resize,
    state_from_checkpoint,
)

#: The resize of the official training and test scripts (``--resize``, -rs_h 498, -rs_w 664).
ORIGINAL_SIZE = [498, 664]

P1Q2 = WeightSpec(
    filename="p1q2.pth",
    urls=("https://titan.gml-team.ru:5003/fsdownload/Qo9PsqxNk/p1q2.pth",),
    sha256=None,
    description=(
        "LinearityIQA checkpoint p1q2.pth (ResNeXt-101, KonIQ-10k, Norm-in-Norm loss p=1 q=2). "
        "URL: the copy the MSU benchmark downloads (msu-video-group/adversarial-defenses-for-iqa, "
        "metrics/subjects/linearity/Dockerfile). The authors share it via Baidu "
        "(https://pan.baidu.com/s/1MRamimHWX8F-SOQ_QsIrvg, code 4z7z) and Google Drive "
        "(https://drive.google.com/drive/folders/1H79ptqjcR4NH6HP4wLsEmqwhNqNNqXwh)"
    ),
    mirrors=(
        "https://pan.baidu.com/s/1MRamimHWX8F-SOQ_QsIrvg (code 4z7z)",
        "https://drive.google.com/drive/folders/1H79ptqjcR4NH6HP4wLsEmqwhNqNNqXwh",
    ),  # lidq92/LinearityIQA README
)


def _reduction(in_features: int) -> nn.Sequential:
    """The official ``dr6``/``dr7`` head (no activations between the linear layers, as in the original)."""
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.BatchNorm1d(1024),
        nn.Linear(1024, 256),
        nn.BatchNorm1d(256),
        nn.Linear(256, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
    )


class LinearityNet(nn.Module):
    """The official ``IQAModel`` (ResNeXt-101 32x8d, avg pooling, no BN at the end); returns the
    uncalibrated score ``[B]`` of the final ``regression`` layer for ImageNet-normalised input."""

    def __init__(self):
        import torchvision  # lazily: torchvision's import costs ~2 s at every CLI start

        super().__init__()
        backbone = torchvision.models.resnext101_32x8d(weights=None)
        self.features = nn.Sequential(*list(backbone.children())[:-2])
        self.dr6 = _reduction(1024)
        self.dr7 = _reduction(2048)
        self.regr6 = nn.Linear(64, 1)
        self.regr7 = nn.Linear(64, 1)
        self.regression = nn.Linear(64 * 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[:7](x)  # conv1 .. layer3
        f6 = self.dr6(x.mean(dim=(2, 3)))  # SPSP with P=1, 'avg' = global average pooling
        x = self.features[7](x)  # layer4
        f7 = self.dr7(x.mean(dim=(2, 3)))
        return self.regression(torch.cat([f6, f7], dim=1)).squeeze(1)


def mapping_coefficient(value: Any, name: str, label: str) -> float:
    """``k[0]`` / ``b[0]`` of the checkpoint, whether stored as a list of floats (the official code),
    numpy values or tensors."""
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy array or scalar
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            raise WeightsError(f"{label}: the checkpoint's {name!r} is empty; expected [final, layer3, layer4] values")
        value = value[0]
        if isinstance(value, torch.Tensor) or hasattr(value, "item"):
            value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WeightsError(
            f"{label}: the checkpoint's {name!r} is {type(value).__name__}, expected numbers; is it the right file?"
        )
    return float(value)


class Linearity(Metric):
    """LinearityIQA (Norm-in-Norm, ResNeXt-101 on KonIQ-10k): MOS-like score, higher is better.

    Input: ``preprocess: msu`` (default) the image at its own size, as the study's MSU wrapper;
    ``preprocess: official`` the original test_demo.py pipeline (8-bit, PIL bilinear to 498x664, 8-bit).
    ImageNet normalisation in both. Output: ``regression * k[0] + b[0]`` from the checkpoint.
    """

    name = "linearity"
    higher_is_better = True
    range = (25.780681610107422, 83.22696685791016)
    input_policy = (
        "preprocess msu: the input size (resize = [H, W] resizes first, torch bilinear antialiased); "
        "official: 8-bit, PIL bilinear to 498x664 (or resize), 8-bit; ImageNet normalisation"
    )
    params = (
        preprocess_param("8-bit image, PIL BILINEAR to 498x664, 8-bit, test_demo.py --resize"),
        Param(
            "resize",
            list,
            None,
            nullable=True,
            help="[height, width] the image is brought to before the network; null: the pipeline's own "
            "(msu: the input size; official: 498x664). With msu the resize is torch's antialiased "
            "bilinear (iqadef's, for quick runs), with official PIL's",
        ),
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path of p1q2.pth (else $IQADEF_WEIGHTS_DIR, the cache, then download)",
        ),
    )
    preprocess: str
    resize: list | None
    weights_path: str | None
    weights = (P1Q2,)

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        if self.resize is not None:
            if (
                len(self.resize) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.resize)
                or min(self.resize) < 32
            ):
                raise ConfigError(
                    f"{where or self.name}.resize: {self.resize!r} is not allowed; expected "
                    f"[height, width], two integers >= 32 (e.g. [498, 664]), or null"
                )
            self.resize = [int(v) for v in self.resize]

    def setup(self, device: torch.device) -> None:
        label = f"linearity ({self.weights_path or P1Q2.filename})"
        checkpoint = load_weights(P1Q2, self.weights_path, allow_numpy=True)
        if not isinstance(checkpoint, Mapping) or "k" not in checkpoint or "b" not in checkpoint:
            raise WeightsError(
                f"{label}: expected the official layout {{'model', 'k', 'b'}}, found "
                f"{list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__}"
                f"; is it the right file?"
            )
        self.k = mapping_coefficient(checkpoint["k"], "k", label)
        self.b = mapping_coefficient(checkpoint["b"], "b", label)
        self.net = build_from_state(LinearityNet, state_from_checkpoint(checkpoint, "model", label), label)

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.net]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input before normalisation, in [0, 1]."""
        if self.preprocess == "official":
            return pil_bilinear_resize(quantize_8bit(images), self.resize or ORIGINAL_SIZE)
        return images if self.resize is None else resize(images, self.resize)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(ready_input(self, images))
        return self.net(imagenet_normalize(x)) * self.k + self.b


@hookimpl
def iqadef_register_metrics(register):
    register(Linearity)
