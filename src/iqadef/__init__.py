"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics."""

from __future__ import annotations

from ._version import __version__
from .core.base import Attack, Defence, ImageScore, Metric, attack_loss
from .core.columns import ScoreColumn
from .core.commands import Command
from .core.dataset import DatasetPlugin
from .core.errors import ConfigError, IqadefError, PluginError, WeightsError
from .core.hookspecs import hookimpl
from .core.params import Param
from .core.query import GradientRequested, QueryMetric
from .core.smoothing import BinnedSmoothing, MetricSmoothing, SmoothedScores

__all__ = [
    "Attack", "BinnedSmoothing", "Command", "ConfigError", "DatasetPlugin", "Defence", "GradientRequested", "ImageScore",
    "IqadefError", "Metric", "MetricSmoothing", "Param", "PluginError", "QueryMetric", "ScoreColumn", "SmoothedScores",
    "WeightsError",
    "__version__", "attack_loss", "hookimpl",
    "load_attack", "load_defence", "load_images", "load_metric", "run_grid",
]

#: The Python API (docs/python.md), imported on first use so that ``import iqadef`` (and a plugin's
#: ``from iqadef import Metric``) does not load pandas and the registry.
_API = ("load_attack", "load_defence", "load_images", "load_metric", "run_grid")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'iqadef' has no attribute {name!r}")
