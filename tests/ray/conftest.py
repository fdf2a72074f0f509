"""Ray fixtures: one small local Ray instance (2 CPUs) shared by the module's tests, shut down after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "core"):  # toy plugins; the actors get the same sys.path entries
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import ray_toy_plugins  # noqa: E402
import toy_plugins  # noqa: E402

from iqadef.core.plugins import InstalledPlugins  # noqa: E402


@pytest.fixture(scope="session")
def ray_registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, ray_toy_plugins], entry_points=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024**2)
    try:
        yield ray
    finally:
        ray.shutdown()
