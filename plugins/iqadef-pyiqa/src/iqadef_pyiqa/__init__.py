"""iqadef-pyiqa: every per-image no-reference metric of pyiqa (chaofengc/IQA-PyTorch) as an iqadef
metric named ``pyiqa-<pyiqa name>``.

This module is the adapter's entry point (group ``iqadef``): it registers each metric lazily, by name and
``"iqadef_pyiqa.metrics:<class>"`` (:class:`iqadef.LazyPlugin`, as the built-ins register), from the written-out
list :data:`.names.NAMES`, so loading the plugins (``iqadef --help``, ``iqadef list``, ``iqadef report``)
imports neither torch nor pyiqa; :mod:`.metrics` (torch) is imported when a ``pyiqa-*`` class is first used,
pyiqa when a metric is set up. Nothing is registered when pyiqa is not installed. The table of metrics:
``python -m iqadef_pyiqa.table`` (docs/pyiqa.md).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from iqadef import LazyPlugin, hookimpl

from .names import NAMES, class_name

__version__ = "0.1.0"

#: What ``from iqadef_pyiqa import ...`` still offers, imported from :mod:`.metrics` on first use.
_FROM_METRICS = ("PyiqaMetric", "NotDifferentiable", "metric_class", "metric_classes", "known_files", "TORCH_FILES")


@hookimpl
def iqadef_register_metrics(register):
    if importlib.util.find_spec("pyiqa") is None:
        return
    for name in NAMES:
        register(LazyPlugin(f"pyiqa-{name}", f"{__name__}.metrics:{class_name(name)}"))


def __getattr__(attribute: str) -> Any:
    if attribute in _FROM_METRICS:
        return getattr(importlib.import_module(f"{__name__}.metrics"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


__all__ = ["NAMES", *_FROM_METRICS]
