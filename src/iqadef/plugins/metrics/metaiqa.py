"""``metaiqa``: MetaIQA (Zhu, Li, Wu, Dong & Shi, "MetaIQA: Deep Meta-learning for No-Reference Image Quality
Assessment", CVPR 2020; code ``zhuhancheng/MetaIQA``).

The network is the official ``Net(resnet, net)``: ``resnet_layer`` = torchvision ResNet-18 *with* its
1000-way ``fc``, then ``net`` = ``BaselineModel1(1, 0.5, 1000)``: fc1 1000->1024, bn1, PReLU (relu1),
dropout 0.5, fc2 1024->512, bn2, PReLU (relu2), dropout 0.5, fc3 512->1, sigmoid. The official scripts
save whole pickled models; ``metaiqa.pth`` (the file the MSU benchmark uses) is the state dict of that
module: keys ``resnet_layer.*`` and ``net.fc1/bn1/relu1/fc2/bn2/relu2/fc3.*``, no ``module.`` prefix.
Training divided MOS by 100 and fed 224x224 images (``Rescale((224, 224))`` for testing), ImageNet-normalised.

Input (``preprocess``): ``msu`` (default) feeds the image at its own size, ImageNet-normalised, as the
study's wrapper (adversarial-defenses-for-iqa, metrics/subjects/meta-iqa/src/model.py); ``official`` is the
original test transform (MetaIQA_FineTune_WILDLIVE.py: the 8-bit image, ``Rescale((224, 224))`` =
``skimage.transform.resize``, ``Normalize``), with skimage's resize rebuilt in torch
(:func:`~._official.skimage_resize`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from iqadef import Metric, Param, WeightSpec, hookimpl, load_weights

from ._official import (
    build_from_state,
    imagenet_normalize,
    preprocess_param,
    quantize_8bit,
    ready_input,
    resize,
    skimage_resize,
    state_from_checkpoint,
)

#: The original test size (``Rescale(output_size=(224, 224))``).
ORIGINAL_SIDE = 224

METAIQA_WEIGHTS = WeightSpec(
    filename="metaiqa.pth",
    urls=("https://titan.gml-team.ru:5003/fsdownload/Wcsx59U3W/metaiqa.pth",),
    sha256=None,
    description=(
        "MetaIQA state dict metaiqa.pth (ResNet-18 + quality head). URL: the copy the MSU benchmark "
        "downloads (msu-video-group/adversarial-defenses-for-iqa, metrics/subjects/meta-iqa/Dockerfile)"
    ),
)


class MetaIQAHead(nn.Module):
    """The official ``BaselineModel1(num_classes=1, keep_probability=0.5, inputsize=1000)``."""

    def __init__(self, in_features: int = 1000, drop: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 1024)
        self.bn1 = nn.BatchNorm1d(1024)
        self.relu1 = nn.PReLU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(1024, 512)
        self.bn2 = nn.BatchNorm1d(512)
        self.relu2 = nn.PReLU()
        self.drop2 = nn.Dropout(drop)
        self.fc3 = nn.Linear(512, 1)
        self.sig = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.relu1(self.bn1(self.fc1(x))))
        x = self.drop2(self.relu2(self.bn2(self.fc2(x))))
        return self.sig(self.fc3(x))


class MetaIQANet(nn.Module):
    """ResNet-18 (with its ImageNet fc) followed by :class:`MetaIQAHead`; returns ``[B]`` in [0, 1]."""

    def __init__(self):
        import torchvision  # lazily: torchvision's import costs ~2 s at every CLI start

        super().__init__()
        self.resnet_layer = torchvision.models.resnet18(weights=None)
        self.net = MetaIQAHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.resnet_layer(x)).squeeze(1)


class MetaIQA(Metric):
    """MetaIQA (meta-learned quality prior, ResNet-18 + MLP head): quality in [0, 1], higher is better.

    Input: ``preprocess: msu`` (default) the image at its own size, as the study's MSU wrapper;
    ``preprocess: official`` the original test transform (8-bit image, skimage resize to 224x224).
    ImageNet normalisation in both. Dropout is off (eval mode), so scores are deterministic.
    """

    name = "metaiqa"
    higher_is_better = True
    range = (0.0, 1.0)
    input_policy = (
        "preprocess msu: the input size (resize = N resizes to N x N first, torch bilinear antialiased); "
        "official: 8-bit, skimage resize to 224x224 (or resize); ImageNet normalisation"
    )
    params = (
        preprocess_param("8-bit image, skimage.transform.resize to 224x224, MetaIQA_FineTune_WILDLIVE.py"),
        Param(
            "resize",
            int,
            None,
            low=32,
            nullable=True,
            help="side of the square the image is brought to; null: the pipeline's own (msu: the input "
            "size; official: 224). With msu the resize is torch's antialiased bilinear (iqadef's, for "
            "quick runs), with official skimage's",
        ),
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path of metaiqa.pth (else $IQADEF_WEIGHTS_DIR, the cache, then download)",
        ),
    )
    preprocess: str
    resize: int | None
    weights_path: str | None
    weights = (METAIQA_WEIGHTS,)

    def setup(self, device: torch.device) -> None:
        label = f"metaiqa ({self.weights_path or METAIQA_WEIGHTS.filename})"
        checkpoint = load_weights(METAIQA_WEIGHTS, self.weights_path, allow_numpy=True)
        key = "state_dict" if isinstance(checkpoint, dict) and "state_dict" in checkpoint else None
        self.net = build_from_state(MetaIQANet, state_from_checkpoint(checkpoint, key, label), label)

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.net]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input before normalisation, in [0, 1]."""
        if self.preprocess == "official":
            side = self.resize or ORIGINAL_SIDE
            return skimage_resize(quantize_8bit(images), (side, side))
        return images if self.resize is None else resize(images, [self.resize, self.resize])

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(ready_input(self, images))  # loads the network first if needed
        return self.net(imagenet_normalize(x))


@hookimpl
def iqadef_register_metrics(register):
    register(MetaIQA)
