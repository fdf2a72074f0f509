"""Fixtures for the attack tests: a small random differentiable CNN metric (always available, fast)
and the embedded ``tiny-iqa`` metric on the bundled images (skipped only while they do not exist)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from repo_paths import BUNDLED_IMAGES
from torch import nn

from iqadef import Metric, WeightsError

BUNDLED = BUNDLED_IMAGES
TEST_SIZE = 64


class RandomCNNMetric(Metric):
    """A fixed random conv net scoring images in about [0, 1] (higher is better); test stand-in."""

    name = "test-random-cnn"
    range = (0.0, 1.0)

    def setup(self, device):
        g = torch.Generator().manual_seed(1234)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 1, 3, padding=1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def score(self, images):
        return torch.sigmoid(self.net(images).mean(dim=(1, 2, 3)) * 4.0)


class LowerIsBetterCNN(RandomCNNMetric):
    """The same net, read as a distortion score (lower is better)."""

    name = "test-random-cnn-lower"
    higher_is_better = False


def _load_png(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def bundled_pngs() -> list[Path]:
    return sorted(BUNDLED.glob("*.png")) if BUNDLED.is_dir() else []


@pytest.fixture(scope="session")
def cnn_metric() -> Metric:
    return RandomCNNMetric().load("cpu")


@pytest.fixture(scope="session")
def lower_metric() -> Metric:
    return LowerIsBetterCNN().load("cpu")


@pytest.fixture(scope="session")
def small_images() -> torch.Tensor:
    """Four 64x64 images: bundled ones downscaled if present, else smooth random ones."""
    paths = bundled_pngs()[:4]
    if len(paths) == 4:
        return torch.cat([_load_png(p, TEST_SIZE) for p in paths])
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((4, 3, 8, 8), generator=g)
    return F.interpolate(coarse, size=(TEST_SIZE, TEST_SIZE), mode="bilinear", align_corners=False)


@pytest.fixture(scope="session")
def tiny_iqa() -> Metric:
    """The embedded default metric; skips only while it (or its packaged weights) does not exist yet."""
    from iqadef import ConfigError
    from iqadef.core.plugins import InstalledPlugins

    try:
        cls = InstalledPlugins().get("metrics", "tiny-iqa")
        return cls().load("cpu")
    except (ConfigError, WeightsError) as exc:
        pytest.skip(f"tiny-iqa is not available yet: {exc}")


@pytest.fixture(scope="session")
def bundled_images() -> torch.Tensor:
    """Bundled images downscaled to 64x64; skips only while the package ships none."""
    paths = bundled_pngs()
    if not paths:
        pytest.skip(f"no bundled images in {BUNDLED} yet")
    return torch.cat([_load_png(p, TEST_SIZE) for p in paths[:4]])
