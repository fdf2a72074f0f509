"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics."""

from __future__ import annotations

__version__ = "0.1.0"

from .core.base import Attack, Defence, ImageScore, Metric, attack_loss  # noqa: E402
from .core.commands import Command  # noqa: E402
from .core.dataset import DatasetPlugin  # noqa: E402
from .core.errors import ConfigError, IqadefError, PluginError, WeightsError  # noqa: E402
from .core.hookspecs import hookimpl  # noqa: E402
from .core.params import Param  # noqa: E402
from .core.query import GradientRequested, QueryMetric  # noqa: E402
from .core.smoothing import MetricSmoothing, SmoothedScores  # noqa: E402

__all__ = [
    "Attack", "Command", "ConfigError", "DatasetPlugin", "Defence", "GradientRequested", "ImageScore", "IqadefError", "Metric", "MetricSmoothing", "Param",
    "PluginError", "QueryMetric", "SmoothedScores", "WeightsError", "__version__", "attack_loss", "hookimpl",
    "load_attack", "load_defence", "load_metric", "run_grid",
]

#: The Python API (docs/python.md), imported on first use so that ``import iqadef`` (and a plugin's
#: ``from iqadef import Metric``) does not load pandas and the registry.
_API = ("load_attack", "load_defence", "load_metric", "run_grid")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'iqadef' has no attribute {name!r}")
