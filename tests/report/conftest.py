"""Report tests: the toy plugins of tests/core and a metric whose scores go below 0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shifted_metric  # noqa: E402
import toy_plugins  # noqa: E402

from iqadef.core.plugins import InstalledPlugins  # noqa: E402


@pytest.fixture(scope="session")
def toy_registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, shifted_metric], entry_points=False)
