"""Shared fixtures for the defence tests: small, smooth, seeded test images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def smooth_images(
    batch: int = 2, height: int = 48, width: int = 56, seed: int = 0, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """Natural-ish images: coarse random colour fields upsampled, plus a little texture, in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=g)
    base = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    texture = 0.1 * torch.rand(batch, 3, height, width, generator=g)
    x = (base + texture).clamp(0.0, 1.0)
    return low + (high - low) * x


@pytest.fixture
def images() -> torch.Tensor:
    return smooth_images()


@pytest.fixture
def make_images():
    return smooth_images


def defence(name: str, **params):
    """A registered defence by name, built and loaded on CPU."""
    from iqadef.core.plugins import installed_plugins

    return installed_plugins().get("defences", name)(**params).load("cpu")


@pytest.fixture
def make_defence():
    return defence
