"""Fixtures for the adaptive-attack tests: the embedded metric and a few small bundled images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from repo_paths import BUNDLED_IMAGES

from iqadef.core.errors import WeightsError
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.metrics.embedded import TinyIQANet

BUNDLED = BUNDLED_IMAGES
#: Images with texture (where JPEG and small turns matter), taken in this order.
IMAGE_NAMES = ("astronaut", "brick", "coffee", "gravel", "chelsea", "grass")


@pytest.fixture(scope="session")
def registry() -> InstalledPlugins:
    return InstalledPlugins()


@pytest.fixture(scope="session")
def tiny_metric(registry, tmp_path_factory):
    """``tiny-iqa`` with its packaged weights; random weights in the official layout if they are absent."""
    cls = registry.get("metrics", "tiny-iqa")
    try:
        return cls().load("cpu")
    except WeightsError:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("tiny") / "tiny_iqa.pt"
        torch.save(TinyIQANet().state_dict(), path)
        return cls(weights_path=path).load("cpu")


def load_bundled(count: int, side: int) -> torch.Tensor:
    """``count`` bundled images downscaled to ``side``×``side``."""
    images = []
    for name in IMAGE_NAMES[:count]:
        with Image.open(BUNDLED / f"{name}.png") as im:
            array = np.array(im.convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.float32)
        images.append(torch.from_numpy(array).permute(2, 0, 1) / 255.0)
    return torch.stack(images)


@pytest.fixture(scope="session")
def trained_metric(registry):
    """``tiny-iqa`` with trained weights: the packaged ones, or the file named by $IQADEF_TEST_TINY_IQA.

    Whether an adaptive attack beats a plain one is a property of a trained metric; with random
    weights the scores barely respond to the image, so these comparisons skip instead.
    """
    cls = registry.get("metrics", "tiny-iqa")
    override = os.environ.get("IQADEF_TEST_TINY_IQA")
    try:
        return (cls(weights_path=Path(override)) if override else cls()).load("cpu")
    except WeightsError as exc:
        pytest.skip(f"trained tiny-iqa weights are not available ({exc})")


@pytest.fixture(scope="session")
def small_images() -> torch.Tensor:
    return load_bundled(4, 128)


@pytest.fixture()
def small_image_dir(tmp_path) -> Path:
    """Two bundled images at 64×64 in a folder, for a run through the grid runner."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, image in zip(IMAGE_NAMES, load_bundled(2, 64)):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{name}.png")
    return folder
