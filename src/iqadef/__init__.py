"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics.

The public plugin API: everything a plugin of any kind needs is importable from here (as in ``llm`` and
pytest), so that plugins never reach into ``iqadef.core`` or the runner. Names whose modules cost time to
import are loaded on first use through the module ``__getattr__``: the contracts and everything else that
needs torch, scipy, pandas or the run stack. ``import iqadef`` itself (the command line, ``iqadef report``, a
plugin index's ``from iqadef import LazyPlugin, hookimpl``) imports none of them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from iqadef._version import __version__
from iqadef.core.columns import ScoreColumn
from iqadef.core.commands import Command
from iqadef.core.errors import ConfigError, IqadefError, PluginError, WeightsError
from iqadef.core.fetch import RemoteFile
from iqadef.core.files import atomic_write_bytes
from iqadef.core.hookspecs import LazyPlugin, hookimpl
from iqadef.core.params import Param

#: name -> module, imported on first use: the contracts and what needs torch (every tensor plugin imports
#: them, the report and ``iqadef --help`` do not), the Python API (docs/python.md), and what only some plugins
#: need (summary scores: scipy; the plugin manager: every plugin; the run stack: pandas and the registry).
_LAZY = {
    **dict.fromkeys(("Attack", "Defence", "ImageScore", "Metric", "attack_loss"), "iqadef.core.base"),
    "CellBatch": "iqadef.core.cells",
    **dict.fromkeys(
        (
            "IMAGE_SUFFIXES",
            "Dataset",
            "DatasetPlugin",
            "Entry",
            "builtin_images_dir",
            "data_dir",
            "dataset_status",
            "fetch_dataset",
            "parse_dataset",
            "read_image",
            "read_mos",
            "read_text",
        ),
        "iqadef.core.dataset",
    ),
    "resolve_device": "iqadef.core.devices",
    **dict.fromkeys(
        ("conv2d_norm_bound", "conv_output_size", "folded_conv_bn", "jacobian_norm", "resize_norm"),
        "iqadef.core.lipschitz",
    ),
    **dict.fromkeys(("GradientRequested", "QueryMetric"), "iqadef.core.query"),
    **dict.fromkeys(
        (
            "BinnedSmoothing",
            "FeatureSplit",
            "MetricSmoothing",
            "SmoothedScores",
            "binned_params",
            "mean_certificate",
            "median_certificate",
            "score_bins",
            "smoothing_params",
        ),
        "iqadef.core.smoothing",
    ),
    **dict.fromkeys(
        (
            "WeightSpec",
            "cache_dir",
            "load_checkpoint",
            "load_state_dict_strict",
            "load_weights",
            "numpy_safe_globals",
            "resolve_weights",
            "save_trained_weights",
            "trained_record_path",
        ),
        "iqadef.core.weights",
    ),
    **dict.fromkeys(("load_attack", "load_defence", "load_images", "load_metric", "run_grid"), "iqadef.api"),
    **dict.fromkeys(
        ("SummaryScore", "paper_gain", "metric_span", "mean_ci", "correlation_ci"), "iqadef.analysis.scores"
    ),
    **dict.fromkeys(("InstalledPlugins", "installed_plugins", "PluginRegistry", "get_registry"), "iqadef.core.plugins"),
    **dict.fromkeys(("export_run", "EXPORT_MARKER"), "iqadef.export"),
    "parse_run_config": "iqadef.config.registry",
    "TRAINING_RECORD_KIND": "iqadef.plan.trained",
}
#: names whose attribute in their module differs
_RENAMED = {"EXPORT_MARKER": "MARKER"}

__all__ = [
    "Command",
    "ConfigError",
    "IqadefError",
    "LazyPlugin",
    "Param",
    "PluginError",
    "RemoteFile",
    "ScoreColumn",
    "WeightsError",
    "__version__",
    "atomic_write_bytes",
    "hookimpl",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), _RENAMED.get(name, name))
        globals()[name] = value  # once: later lookups find it without this hook
        return value
    raise AttributeError(f"module 'iqadef' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
