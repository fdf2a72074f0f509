"""Report tests: the toy plugins of tests/support and a metric whose scores go below 0."""

from __future__ import annotations

import pytest
import shifted_metric
import toy_plugins

from iqadef.core.plugins import InstalledPlugins


@pytest.fixture(scope="session")
def toy_registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, shifted_metric], entry_points=False)
