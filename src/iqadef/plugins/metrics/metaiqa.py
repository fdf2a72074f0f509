"""``metaiqa``: MetaIQA (Zhu, Li, Wu, Dong & Shi, "MetaIQA: Deep Meta-learning for No-Reference Image Quality
Assessment", CVPR 2020; code ``zhuhancheng/MetaIQA``).

The network is the official ``Net(resnet, net)``: ``resnet_layer`` = torchvision ResNet-18 *with* its
1000-way ``fc``, then ``net`` = ``BaselineModel1(1, 0.5, 1000)``: fc1 1000->1024, bn1, PReLU (relu1),
dropout 0.5, fc2 1024->512, bn2, PReLU (relu2), dropout 0.5, fc3 512->1, sigmoid. The official scripts
save whole pickled models; ``metaiqa.pth`` (the file the MSU benchmark uses) is the state dict of that
module: keys ``resnet_layer.*`` and ``net.fc1/bn1/relu1/fc2/bn2/relu2/fc3.*``, no ``module.`` prefix.
Training divided MOS by 100 and fed 224x224 images (``Rescale((224, 224))`` for testing), ImageNet-normalised.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from iqadef import Metric, Param, hookimpl
from iqadef.core.weights import WeightSpec, load_weights

from ._official import build_from_state, ready_input, imagenet_normalize, resize, state_from_checkpoint

METAIQA_WEIGHTS = WeightSpec(
    filename="metaiqa.pth",
    urls=("https://titan.gml-team.ru:5003/fsdownload/Wcsx59U3W/metaiqa.pth",),
    sha256=None,
    description=("MetaIQA state dict metaiqa.pth (ResNet-18 + quality head). URL: the copy the MSU benchmark "
                 "downloads (msu-video-group/adversarial-defenses-for-iqa, metrics/subjects/meta-iqa/Dockerfile)"),
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
        super().__init__()
        self.resnet_layer = torchvision.models.resnet18(weights=None)
        self.net = MetaIQAHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.resnet_layer(x)).squeeze(1)


class MetaIQA(Metric):
    """MetaIQA (meta-learned quality prior, ResNet-18 + MLP head): quality in [0, 1], higher is better.

    Input: resized to 224x224 (bilinear, antialiased; ``resize: null`` keeps the input size, as the MSU
    benchmark wrapper does), ImageNet-normalised. Dropout is off (eval mode), so scores are deterministic.
    """

    name = "metaiqa"
    higher_is_better = True
    range = (0.0, 1.0)
    input_policy = "resized to resize x resize (default 224 as the original; null = keep), ImageNet normalisation"
    params = (
        Param("resize", int, 224, low=32, nullable=True,
              help="side of the square the image is resized to (the original tests at 224x224); null keeps the size"),
        Param("weights_path", Path, None,
              help="explicit path of metaiqa.pth (else $IQADEF_WEIGHTS_DIR, the cache, then download)"),
    )
    weights = (METAIQA_WEIGHTS,)

    def setup(self, device: torch.device) -> None:
        label = f"metaiqa ({self.weights_path or METAIQA_WEIGHTS.filename})"
        checkpoint = load_weights(METAIQA_WEIGHTS, self.weights_path, allow_numpy=True)
        key = "state_dict" if isinstance(checkpoint, dict) and "state_dict" in checkpoint else None
        self.net = build_from_state(MetaIQANet, state_from_checkpoint(checkpoint, key, label), label)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        x = ready_input(self, images)
        if self.resize is not None:
            x = resize(x, [self.resize, self.resize])
        return self.net(imagenet_normalize(x))


@hookimpl
def iqadef_register_metrics(register):
    register(MetaIQA)

