from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import toy_plugins  # noqa: E402

from iqadef.core.plugins import PluginRegistry  # noqa: E402


@pytest.fixture(scope="session")
def toy_registry() -> PluginRegistry:
    return PluginRegistry(extra=[toy_plugins], entry_points=False)


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """Six small images: four 24x24 and two 16x20 (two size groups)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        h, w = (24, 24) if i < 4 else (16, 20)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (2 + i)) , np.cos(yy / (3 + i)), np.sin((xx + yy) / 5)], -1) * 0.4 + 0.5
        img = np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
