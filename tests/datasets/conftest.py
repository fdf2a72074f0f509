from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
sys.path.insert(0, str(Path(__file__).parent))

import toy_plugins  # noqa: E402

from iqadef.core.plugins import InstalledPlugins  # noqa: E402


@pytest.fixture(scope="session")
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins], entry_points=False)


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Every test gets its own data dir and no ambient offline setting."""
    monkeypatch.setenv("IQADEF_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("IQADEF_OFFLINE", raising=False)
    return tmp_path / "data"
