"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .core.commands import Command
from .core.errors import ConfigError, IqadefError, PluginError, WeightsError
from .core.hookspecs import LazyPlugin, hookimpl
from .core.params import Param

if TYPE_CHECKING:  # what the lazy names below are (for type checkers)
    from .api import load_attack, load_defence, load_images, load_metric, run_grid
    from .core.base import Attack, Defence, ImageScore, Metric, attack_loss
    from .core.dataset import DatasetPlugin
    from .core.query import GradientRequested, QueryMetric
    from .core.smoothing import BinnedSmoothing, MetricSmoothing, SmoothedScores

__all__ = [
    "Attack", "BinnedSmoothing", "Command", "ConfigError", "DatasetPlugin", "Defence", "GradientRequested", "ImageScore",
    "IqadefError", "LazyPlugin", "Metric", "MetricSmoothing", "Param", "PluginError", "QueryMetric", "SmoothedScores",
    "WeightsError", "__version__", "attack_loss", "hookimpl",
    "load_attack", "load_defence", "load_images", "load_metric", "run_grid",
]

#: Names imported on first use (module ``__getattr__``): the contracts need torch, the Python API
#: (docs/python.md) pandas and the registry. ``import iqadef`` (the command line, the report) and a plugin's
#: ``from iqadef import hookimpl, LazyPlugin`` stay light; ``from iqadef import Metric`` imports torch there.
_LAZY = {
    "base": ("Attack", "Defence", "ImageScore", "Metric", "attack_loss"),
    "dataset": ("DatasetPlugin",),
    "query": ("GradientRequested", "QueryMetric"),
    "smoothing": ("BinnedSmoothing", "MetricSmoothing", "SmoothedScores"),
    "api": ("load_attack", "load_defence", "load_images", "load_metric", "run_grid"),
}


def _module_of(name: str) -> Any:
    """The module that defines the lazy ``name`` (imported here, so that the import graph shows it)."""
    if name in _LAZY["base"]:
        from .core import base

        return base
    if name in _LAZY["dataset"]:
        from .core import dataset

        return dataset
    if name in _LAZY["query"]:
        from .core import query

        return query
    if name in _LAZY["smoothing"]:
        from .core import smoothing

        return smoothing
    from . import api

    return api


def __getattr__(name: str) -> Any:
    if any(name in names for names in _LAZY.values()):
        value = getattr(_module_of(name), name)
        globals()[name] = value  # once: later lookups find it without this hook
        return value
    raise AttributeError(f"module 'iqadef' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
