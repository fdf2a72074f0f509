"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics."""

from __future__ import annotations

__version__ = "0.1.0"

from .core.base import Attack, Defence, ImageScore, Metric, attack_loss  # noqa: E402
from .core.commands import Command  # noqa: E402
from .core.errors import ConfigError, IqadefError, PluginError, WeightsError  # noqa: E402
from .core.hookspecs import hookimpl  # noqa: E402
from .core.params import Param  # noqa: E402
from .core.smoothing import MetricSmoothing, SmoothedScores  # noqa: E402

__all__ = [
    "Attack", "Command", "ConfigError", "Defence", "ImageScore", "IqadefError", "Metric", "MetricSmoothing", "Param",
    "PluginError", "SmoothedScores", "WeightsError", "__version__", "attack_loss", "hookimpl",
]
