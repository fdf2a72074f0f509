from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toy_plugins  # noqa: E402

from iqadef.core.plugins import InstalledPlugins  # noqa: E402


@pytest.fixture(scope="session")
def toy_registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins], entry_points=False)


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
