"""iqadef: adversarial attacks and purification defences for no-reference image-quality metrics.

The public plugin API: everything a plugin of any kind needs is importable from here (as in ``llm`` and
pytest), so that plugins never reach into ``iqadef.core`` or the runner. Names whose modules cost time to
import (scipy, pandas, the run stack) are loaded on first use through the module ``__getattr__``.
"""

from __future__ import annotations

from importlib import import_module

from ._version import __version__
from .core.base import Attack, Defence, ImageScore, Metric, attack_loss
from .core.cells import CellBatch
from .core.columns import ScoreColumn
from .core.commands import Command
from .core.dataset import (IMAGE_SUFFIXES, Dataset, DatasetPlugin, Entry, builtin_images_dir, data_dir,
                           dataset_status, fetch_dataset, parse_dataset, read_image, read_mos, read_text)
from .core.devices import resolve_device
from .core.errors import ConfigError, IqadefError, PluginError, WeightsError
from .core.fetch import RemoteFile
from .core.files import atomic_write_bytes
from .core.hookspecs import hookimpl
from .core.lipschitz import conv2d_norm_bound, conv_output_size, folded_conv_bn, jacobian_norm, resize_norm
from .core.params import Param
from .core.query import GradientRequested, QueryMetric
from .core.smoothing import (BinnedSmoothing, FeatureSplit, MetricSmoothing, SmoothedScores, binned_params,
                             mean_certificate, median_certificate, score_bins, smoothing_params)
from .core.weights import (WeightSpec, cache_dir, load_checkpoint, load_state_dict_strict, load_weights,
                           numpy_safe_globals, resolve_weights, save_trained_weights, trained_record_path)

#: name -> module, imported on first use: the Python API (docs/python.md) and what only some plugins need
#: (summary scores: scipy; the plugin manager: every plugin; the run stack: pandas and the registry).
_LAZY = {
    **dict.fromkeys(("load_attack", "load_defence", "load_images", "load_metric", "run_grid"), "iqadef.api"),
    **dict.fromkeys(("SummaryScore", "paper_gain", "metric_span", "mean_ci", "correlation_ci"),
                    "iqadef.core.scores"),
    **dict.fromkeys(("PluginRegistry", "get_registry"), "iqadef.core.plugins"),
    **dict.fromkeys(("export_run", "EXPORT_MARKER"), "iqadef.core.export"),
    "parse_run_config": "iqadef.core.registry",
    "TRAINING_RECORD_KIND": "iqadef.core.run.trained",
}
#: names whose attribute in their module differs
_RENAMED = {"EXPORT_MARKER": "MARKER"}

__all__ = [
    "Attack", "BinnedSmoothing", "CellBatch", "Command", "ConfigError", "Dataset", "DatasetPlugin", "Defence", "Entry",
    "FeatureSplit", "conv2d_norm_bound", "conv_output_size", "folded_conv_bn", "jacobian_norm", "resize_norm",
    "GradientRequested", "IMAGE_SUFFIXES", "ImageScore", "IqadefError", "Metric", "MetricSmoothing", "Param",
    "PluginError", "QueryMetric", "RemoteFile", "ScoreColumn", "SmoothedScores", "WeightSpec", "WeightsError", "__version__",
    "atomic_write_bytes", "attack_loss", "binned_params", "builtin_images_dir", "cache_dir", "data_dir",
    "dataset_status", "fetch_dataset", "hookimpl", "load_checkpoint", "load_state_dict_strict", "load_weights",
    "mean_certificate", "median_certificate", "numpy_safe_globals", "parse_dataset", "read_image", "read_mos",
    "read_text", "resolve_device", "resolve_weights", "save_trained_weights", "score_bins", "smoothing_params",
    "trained_record_path", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iqadef' has no attribute {name!r}")
