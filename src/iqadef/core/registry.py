"""Deprecated alias of :mod:`iqadef.config.registry` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.registry moved to iqadef.config.registry; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.config.registry")
