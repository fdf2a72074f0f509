"""Helpers of the dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, seed: int = 0, size=(24, 32), fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path
