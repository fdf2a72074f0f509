"""Ray fixtures: one small local Ray instance (2 CPUs) shared by the module's tests, shut down after."""

from __future__ import annotations

import pytest
import ray_toy_plugins
import toy_plugins

from iqadef.core.plugins import InstalledPlugins


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
