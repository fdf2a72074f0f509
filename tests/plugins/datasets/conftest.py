from __future__ import annotations

import pytest
import toy_plugins

from iqadef.core.plugins import InstalledPlugins


@pytest.fixture(scope="session")
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins], entry_points=False)


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Every test gets its own data dir and no ambient offline setting."""
    monkeypatch.setenv("IQADEF_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("IQADEF_OFFLINE", raising=False)
    return tmp_path / "data"
