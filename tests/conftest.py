"""Fixtures shared by every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

#: Shared helpers (toy plugins, official-layout checkpoints, HTTP server...) live in tests/support, put on sys.path
#: here once for every folder (tests run with --import-mode=importlib). Ray actors get the driver's sys.path entries.
SUPPORT = Path(__file__).resolve().parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

import toy_plugins  # noqa: E402

from iqadef.core.plugins import InstalledPlugins  # noqa: E402


@pytest.fixture(scope="session")
def toy_registry() -> InstalledPlugins:
    """The toy plugins only (no entry points): fast, and independent of what is installed."""
    return InstalledPlugins(extra=[toy_plugins], entry_points=False)


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """Six small images: four 24x24 and two 16x20 (two size groups)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        h, w = (24, 24) if i < 4 else (16, 20)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (2 + i)), np.cos(yy / (3 + i)), np.sin((xx + yy) / 5)], -1) * 0.4 + 0.5
        img = np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty cache (``TORCH_HOME``) and no offline folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("IQADEF_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("IQADEF_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture()
def offline_home(home, monkeypatch) -> Path:
    """As ``home``, with downloads forbidden (``IQADEF_OFFLINE=1``); returns the empty ``TORCH_HOME``."""
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    return home / "torch"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Small tensors run faster (and identically) on one thread; CI machines have two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
