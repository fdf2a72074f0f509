from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toy_plugins  # noqa: E402

from iqadef.core.plugins import PluginRegistry  # noqa: E402


@pytest.fixture(scope="session")
def toy_registry() -> PluginRegistry:
    return PluginRegistry(extra=[toy_plugins], entry_points=False)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty cache (``TORCH_HOME``) and no offline folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("IQADEF_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("IQADEF_OFFLINE", raising=False)
    return tmp_path


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
